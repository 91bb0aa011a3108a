//! Minimal `.npy` reading and writing for float arrays (NumPy format 1.0-3.0, C order).

use std::path::Path;

use crate::error::{IbnError, Result};

/// A dense float32 array read from or written to a `.npy` file.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyArray {
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// Values in C (row-major) order.
    pub data: Vec<f32>,
}

const MAGIC: &[u8] = b"\x93NUMPY";

fn npy_error(path: &Path, reason: impl Into<String>) -> IbnError {
    IbnError::Npy {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// Value of `'key': value` in a header dictionary.
fn header_field<'a>(header: &'a str, key: &str) -> Option<&'a str> {
    let start = header.find(&format!("'{key}'"))? + key.len() + 2;
    let rest = header[start..].trim_start().strip_prefix(':')?.trim_start();
    let end = if rest.starts_with('(') {
        rest.find(')')? + 1
    } else {
        rest.find([',', '}'])?
    };
    Some(rest[..end].trim())
}

impl NpyArray {
    /// Parses `.npy` bytes holding `<f4` or `<f8` values (the latter converted to f32).
    ///
    /// # Errors
    /// [`IbnError::Npy`] for anything else: bad magic, Fortran order, other dtypes, a data size
    /// that does not match the shape.
    pub fn from_bytes(bytes: &[u8], path: &Path) -> Result<Self> {
        if bytes.len() < 10 || &bytes[..6] != MAGIC {
            return Err(npy_error(path, "not a .npy file (bad magic)"));
        }
        let (header_len, offset) = match bytes[6] {
            1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
            2 | 3 if bytes.len() >= 12 => (
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize,
                12,
            ),
            v => return Err(npy_error(path, format!("unsupported .npy version {v}"))),
        };
        let header = bytes
            .get(offset..offset + header_len)
            .ok_or_else(|| npy_error(path, "truncated header"))?;
        let header = String::from_utf8_lossy(header);
        let descr = header_field(&header, "descr").ok_or_else(|| npy_error(path, "no dtype"))?;
        let width = match descr.trim_matches(|c| c == '\'' || c == '"') {
            "<f4" => 4,
            "<f8" => 8,
            other => {
                return Err(npy_error(
                    path,
                    format!("dtype {other} is not supported (use little-endian float32 '<f4')"),
                ));
            }
        };
        if header_field(&header, "fortran_order") != Some("False") {
            return Err(npy_error(path, "Fortran-ordered arrays are not supported"));
        }
        let shape_text =
            header_field(&header, "shape").ok_or_else(|| npy_error(path, "no shape"))?;
        let shape = shape_text
            .trim_matches(|c| c == '(' || c == ')')
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|s| {
                s.parse::<usize>()
                    .map_err(|_| npy_error(path, format!("bad shape {shape_text}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let count: usize = shape.iter().product();
        let payload = &bytes[offset + header_len..];
        if payload.len() != count * width {
            return Err(npy_error(
                path,
                format!(
                    "shape {shape:?} needs {} bytes of data, the file has {}",
                    count * width,
                    payload.len()
                ),
            ));
        }
        let data = if width == 4 {
            payload
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect()
        } else {
            payload
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")) as f32)
                .collect()
        };
        Ok(Self { shape, data })
    }

    /// Reads a `.npy` file.
    ///
    /// # Errors
    /// [`IbnError::Npy`] when the file cannot be read or parsed.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let bytes = std::fs::read(path).map_err(|e| npy_error(path, e.to_string()))?;
        Self::from_bytes(&bytes, path)
    }

    /// Serialises as a version 1.0 `<f4` `.npy` file.
    pub fn to_bytes(&self) -> Vec<u8> {
        let shape = match self.shape.len() {
            1 => format!("({},)", self.shape[0]),
            _ => format!(
                "({})",
                self.shape
                    .iter()
                    .map(|d| d.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut header = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
        // Pad so that the data starts on a 64-byte boundary, header ending in '\n'.
        let unpadded = MAGIC.len() + 4 + header.len() + 1;
        header.push_str(&" ".repeat((64 - unpadded % 64) % 64));
        header.push('\n');
        let mut out = Vec::with_capacity(10 + header.len() + self.data.len() * 4);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&[1, 0]);
        out.extend_from_slice(&(header.len() as u16).to_le_bytes());
        out.extend_from_slice(header.as_bytes());
        for v in &self.data {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// Writes a version 1.0 `<f4` `.npy` file.
    ///
    /// # Errors
    /// [`IbnError::Npy`] when the file cannot be written.
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        std::fs::write(path, self.to_bytes()).map_err(|e| npy_error(path, e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_keeps_shape_and_values() {
        let array = NpyArray {
            shape: vec![2, 3],
            data: vec![1.0, -2.5, 3.25, 0.0, f32::MAX, -1e-7],
        };
        let bytes = array.to_bytes();
        assert_eq!(
            (10 + u16::from_le_bytes([bytes[8], bytes[9]]) as usize) % 64,
            0
        );
        assert_eq!(
            NpyArray::from_bytes(&bytes, Path::new("x.npy")).unwrap(),
            array
        );
    }

    #[test]
    fn rejects_other_dtypes_and_bad_sizes() {
        let mut bytes = NpyArray {
            shape: vec![2],
            data: vec![1.0, 2.0],
        }
        .to_bytes();
        let mut int = bytes.clone();
        let at = int.windows(3).position(|w| w == b"<f4").unwrap();
        int[at + 1] = b'i';
        let err = NpyArray::from_bytes(&int, Path::new("x.npy")).unwrap_err();
        assert!(err.to_string().contains("<i4"), "{err}");
        bytes.pop();
        let err = NpyArray::from_bytes(&bytes, Path::new("x.npy")).unwrap_err();
        assert!(err.to_string().contains("needs 8 bytes"), "{err}");
        let err = NpyArray::from_bytes(b"hello world", Path::new("x.npy")).unwrap_err();
        assert!(err.to_string().contains("magic"), "{err}");
    }
}
