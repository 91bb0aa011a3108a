//! End to end: the domain-shift example runs in `--quick` mode and writes well-formed outputs.
//!
//! `cargo test` builds the examples before it runs the integration tests; this test runs the
//! built binary (`target/<profile>/examples/domain_shift`) found next to its own executable.
#![cfg(feature = "autodiff")]

use std::path::{Path, PathBuf};
use std::process::Command;

/// The example binary built by the same `cargo test` invocation.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("path of the test executable");
    // .../target/<profile>/deps/demo-HASH -> .../target/<profile>/examples/domain_shift
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable inside target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("domain_shift{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.is_file(),
        "{} is missing: run the whole `cargo test` (which builds the examples) or \
         `cargo build --example domain_shift` with the same profile first",
        binary.display()
    );
    binary
}

const VARIANTS: [&str; 3] = ["no-ibn", "ibn-a", "ibn-b"];
const DOMAINS: [&str; 7] = [
    "in-domain",
    "colour",
    "brightness",
    "contrast",
    "inverted",
    "texture",
    "noise",
];

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Checks a PNG signature and returns the IHDR width and height.
fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        bytes.len() > 33,
        "{} is too short for a PNG",
        path.display()
    );
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{}: PNG signature",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR", "{}: first chunk", path.display());
    let be = |i: usize| u32::from_be_bytes(bytes[i..i + 4].try_into().unwrap());
    (be(16), be(20))
}

#[test]
fn quick_demo_writes_well_formed_outputs() {
    let out = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("domain_shift_quick");
    let _ = std::fs::remove_dir_all(&out);
    let output = Command::new(example_binary())
        .args(["--quick", "--out"])
        .arg(&out)
        .output()
        .expect("run the example");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        output.status
    );
    let last = stdout.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("Best generalisation: "),
        "last line: {last}"
    );
    assert!(
        stdout.contains("identical to the trained model"),
        "{stdout}"
    );

    // results.csv: header, then variant x seed x domain rows with accuracies in [0, 1].
    let results = read(&out.join("results.csv"));
    let mut lines = results.lines();
    assert_eq!(lines.next(), Some("variant,seed,domain,accuracy"));
    let mut rows = Vec::new();
    for line in lines {
        let fields: Vec<&str> = line.split(',').collect();
        assert_eq!(fields.len(), 4, "row `{line}`");
        let seed: u64 = fields[1]
            .parse()
            .unwrap_or_else(|_| panic!("seed in `{line}`"));
        let accuracy: f64 = fields[3]
            .parse()
            .unwrap_or_else(|_| panic!("accuracy in `{line}`"));
        assert!(
            (0.0..=1.0).contains(&accuracy),
            "accuracy out of [0, 1] in `{line}`"
        );
        assert!(VARIANTS.contains(&fields[0]), "variant in `{line}`");
        assert!(DOMAINS.contains(&fields[2]), "domain in `{line}`");
        rows.push((fields[0].to_string(), seed, fields[2].to_string()));
    }
    let seeds = rows.iter().map(|r| r.1).max().unwrap() + 1;
    assert_eq!(
        rows.len() as u64,
        3 * 7 * seeds,
        "one row per variant, seed and domain"
    );
    for variant in VARIANTS {
        for domain in DOMAINS {
            for seed in 0..seeds {
                assert!(
                    rows.iter()
                        .any(|r| r.0 == variant && r.1 == seed && r.2 == domain),
                    "missing {variant} seed {seed} {domain}"
                );
            }
        }
    }

    // summary.csv: mean and std per variant and metric.
    let summary = read(&out.join("summary.csv"));
    let mut lines = summary.lines();
    assert_eq!(lines.next(), Some("variant,metric,mean,std,seeds"));
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    assert_eq!(rows.len(), 3 * (7 + 2));
    for row in &rows {
        assert_eq!(row.len(), 5, "{row:?}");
        let mean: f64 = row[2].parse().unwrap();
        let std: f64 = row[3].parse().unwrap();
        assert!(
            (-1.0..=1.0).contains(&mean) && (0.0..=1.0).contains(&std),
            "{row:?}"
        );
    }
    for variant in VARIANTS {
        assert!(
            rows.iter().any(|r| r[0] == variant && r[1] == "shifted"),
            "{variant} shifted"
        );
    }

    for (name, min_w, min_h) in [("chart.png", 300, 200), ("samples.png", 100, 100)] {
        let (w, h) = png_size(&out.join(name));
        assert!(
            (min_w..=4000).contains(&w) && (min_h..=4000).contains(&h),
            "{name}: {w}x{h}"
        );
    }

    for variant in VARIANTS {
        let path = out.join(format!("model_{variant}.bpk"));
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 1000, "{} missing or empty", path.display());
    }
}

#[test]
fn bad_arguments_fail_with_one_line() {
    for args in [
        &["--seeds", "0"][..],
        &["--frobnicate"],
        &["--device", "abacus"],
        &["--steps"],
    ] {
        let output = Command::new(example_binary())
            .args(args)
            .output()
            .expect("run the example");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error: "), "{args:?}: {stderr}");
    }
}
