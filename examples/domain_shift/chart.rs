//! A tiny raster canvas with a 5x7 bitmap font, the grouped bar chart of the results, a grid
//! of sample images, and PNG encoding.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

/// An RGB colour.
pub type Rgb = [u8; 3];

/// An RGB image buffer.
pub struct Canvas {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    pixels: Vec<u8>,
}

impl Canvas {
    /// A canvas filled with `background`.
    pub fn new(width: usize, height: usize, background: Rgb) -> Self {
        Self {
            width,
            height,
            pixels: background.repeat(width * height),
        }
    }

    /// Sets one pixel; coordinates outside the canvas are ignored.
    pub fn set(&mut self, x: i64, y: i64, colour: Rgb) {
        if x >= 0 && y >= 0 && (x as usize) < self.width && (y as usize) < self.height {
            let i = (y as usize * self.width + x as usize) * 3;
            self.pixels[i..i + 3].copy_from_slice(&colour);
        }
    }

    /// Fills the rectangle `[x, x + w) x [y, y + h)`.
    pub fn fill_rect(&mut self, x: i64, y: i64, w: i64, h: i64, colour: Rgb) {
        for yy in y..y + h {
            for xx in x..x + w {
                self.set(xx, yy, colour);
            }
        }
    }

    /// Draws `text` with the 5x7 font at `scale`, top-left corner at `(x, y)`.
    pub fn text(&mut self, x: i64, y: i64, text: &str, scale: i64, colour: Rgb) {
        let mut cx = x;
        for ch in text.chars() {
            let rows = glyph(ch);
            for (ry, bits) in rows.iter().enumerate() {
                for rx in 0..5 {
                    if bits & (0x10 >> rx) != 0 {
                        self.fill_rect(
                            cx + rx * scale,
                            y + ry as i64 * scale,
                            scale,
                            scale,
                            colour,
                        );
                    }
                }
            }
            cx += 6 * scale;
        }
    }

    /// Width in pixels of `text` drawn at `scale`.
    pub fn text_width(text: &str, scale: i64) -> i64 {
        (text.chars().count() as i64 * 6 - 1).max(0) * scale
    }

    /// Writes the canvas as an 8-bit RGB PNG.
    ///
    /// # Errors
    /// When the file cannot be created or written.
    pub fn save_png(&self, path: &Path) -> Result<(), String> {
        let error = |e: &dyn std::fmt::Display| format!("cannot write {}: {e}", path.display());
        let file = File::create(path).map_err(|e| error(&e))?;
        let mut encoder =
            png::Encoder::new(BufWriter::new(file), self.width as u32, self.height as u32);
        encoder.set_color(png::ColorType::Rgb);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().map_err(|e| error(&e))?;
        writer
            .write_image_data(&self.pixels)
            .map_err(|e| error(&e))?;
        writer.finish().map_err(|e| error(&e))
    }
}

/// One bar series of the chart: a name, a colour, and per group a mean and a spread.
pub struct Series {
    /// Legend label.
    pub name: String,
    /// Bar colour.
    pub colour: Rgb,
    /// `(mean, std)` per group, in `[0, 1]`.
    pub values: Vec<(f64, f64)>,
}

const WHITE: Rgb = [255, 255, 255];
const INK: Rgb = [40, 40, 40];
const GRID: Rgb = [225, 225, 225];

/// Draws a grouped bar chart: one group per label, one bar per series, with the spread as
/// an error bar, a 0-100 % axis, a dashed reference line at `chance`, a title and a legend
/// of coloured squares.
pub fn bar_chart(title: &str, groups: &[String], series: &[Series], chance: f64) -> Canvas {
    let (left, top, bottom) = (70i64, 70i64, 30i64);
    let bar_w = 16i64;
    let group_w = bar_w * series.len() as i64 + 24;
    let plot_w = group_w * groups.len() as i64;
    let plot_h = 300i64;
    let width = (left + plot_w + 20).max(left + Canvas::text_width(title, 2) + 20);
    let height = top + plot_h + bottom;
    let mut canvas = Canvas::new(width as usize, height as usize, WHITE);
    canvas.text(left, 12, title, 2, INK);

    // Legend: coloured squares and names, on one line under the title.
    let mut lx = left;
    for s in series {
        canvas.fill_rect(lx, 40, 12, 12, s.colour);
        canvas.text(lx + 18, 42, &s.name, 1, INK);
        lx += 18 + Canvas::text_width(&s.name, 1) + 24;
    }

    // Axis with grid lines every 10 %, labels every 20 %.
    let y_of = |v: f64| top + plot_h - (v.clamp(0.0, 1.0) * plot_h as f64).round() as i64;
    for tick in 0..=10 {
        let y = y_of(tick as f64 / 10.0);
        canvas.fill_rect(left, y, plot_w, 1, GRID);
        if tick % 2 == 0 {
            let label = format!("{}%", tick * 10);
            canvas.text(
                left - 8 - Canvas::text_width(&label, 1),
                y - 3,
                &label,
                1,
                INK,
            );
        }
    }
    canvas.fill_rect(left, top, 1, plot_h + 1, INK);
    canvas.fill_rect(left, top + plot_h, plot_w, 1, INK);

    // Chance level, dashed, drawn under the bars.
    let y = y_of(chance);
    for x in (left..left + plot_w).step_by(8) {
        canvas.fill_rect(x, y, 4, 1, INK);
    }
    let label = "chance";
    canvas.text(
        left - 8 - Canvas::text_width(label, 1),
        y - 3,
        label,
        1,
        INK,
    );

    for (g, label) in groups.iter().enumerate() {
        let gx = left + g as i64 * group_w + 12;
        for (k, s) in series.iter().enumerate() {
            let (mean, std) = s.values[g];
            let x = gx + k as i64 * bar_w;
            let y = y_of(mean);
            canvas.fill_rect(x + 1, y, bar_w - 2, top + plot_h - y, s.colour);
            if std > 0.0 {
                let (y0, y1) = (y_of(mean + std), y_of(mean - std));
                let cx = x + bar_w / 2;
                canvas.fill_rect(cx, y0, 1, y1 - y0 + 1, INK);
                canvas.fill_rect(cx - 3, y0, 7, 1, INK);
                canvas.fill_rect(cx - 3, y1, 7, 1, INK);
            }
        }
        let tw = Canvas::text_width(label, 1);
        canvas.text(
            gx + (group_w - 24 - tw) / 2,
            top + plot_h + 10,
            label,
            1,
            INK,
        );
    }
    canvas
}

/// A grid of images (`rows x cols`, each `size x size`, channel-major floats in `[0, 1]`)
/// with a row label on the left, scaled up by `zoom`.
pub fn image_grid(rows: &[(String, Vec<&[f32]>)], size: usize, zoom: usize) -> Canvas {
    let label_w = rows
        .iter()
        .map(|(l, _)| Canvas::text_width(l, 1))
        .max()
        .unwrap_or(0)
        + 16;
    let cols = rows.iter().map(|(_, imgs)| imgs.len()).max().unwrap_or(0);
    let cell = (size * zoom + 4) as i64;
    let width = label_w + cell * cols as i64 + 4;
    let height = cell * rows.len() as i64 + 4;
    let mut canvas = Canvas::new(width as usize, height as usize, WHITE);
    let plane = size * size;
    for (r, (label, images)) in rows.iter().enumerate() {
        let y0 = 4 + r as i64 * cell;
        canvas.text(8, y0 + cell / 2 - 6, label, 1, INK);
        for (c, image) in images.iter().enumerate() {
            let x0 = label_w + c as i64 * cell;
            for py in 0..size {
                for px in 0..size {
                    let i = py * size + px;
                    let rgb = [0, 1, 2]
                        .map(|ch| (image[ch * plane + i].clamp(0.0, 1.0) * 255.0).round() as u8);
                    let z = zoom as i64;
                    canvas.fill_rect(x0 + px as i64 * z, y0 + py as i64 * z, z, z, rgb);
                }
            }
        }
    }
    canvas
}

/// The 5x7 bitmap of `ch` (rows top to bottom, 5 bits each, most significant on the left).
/// Lower-case letters are drawn as capitals; unknown characters as a blank.
fn glyph(ch: char) -> [u8; 7] {
    match ch.to_ascii_uppercase() {
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'B' => [0x1E, 0x11, 0x11, 0x1E, 0x11, 0x11, 0x1E],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'D' => [0x1E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'F' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x10],
        'G' => [0x0E, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0F],
        'H' => [0x11, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'J' => [0x07, 0x02, 0x02, 0x02, 0x02, 0x12, 0x0C],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1F],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'N' => [0x11, 0x11, 0x19, 0x15, 0x13, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'Q' => [0x0E, 0x11, 0x11, 0x11, 0x15, 0x12, 0x0D],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0A, 0x04],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0A],
        'X' => [0x11, 0x11, 0x0A, 0x04, 0x0A, 0x11, 0x11],
        'Y' => [0x11, 0x11, 0x0A, 0x04, 0x04, 0x04, 0x04],
        'Z' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x10, 0x1F],
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0C, 0x0C],
        ',' => [0x00, 0x00, 0x00, 0x00, 0x0C, 0x04, 0x08],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '-' => [0x00, 0x00, 0x00, 0x1F, 0x00, 0x00, 0x00],
        '+' => [0x00, 0x04, 0x04, 0x1F, 0x04, 0x04, 0x00],
        '%' => [0x18, 0x19, 0x02, 0x04, 0x08, 0x13, 0x03],
        '/' => [0x00, 0x01, 0x02, 0x04, 0x08, 0x10, 0x00],
        '(' => [0x02, 0x04, 0x08, 0x08, 0x08, 0x04, 0x02],
        ')' => [0x08, 0x04, 0x02, 0x02, 0x02, 0x04, 0x08],
        '=' => [0x00, 0x00, 0x1F, 0x00, 0x1F, 0x00, 0x00],
        _ => [0; 7],
    }
}
