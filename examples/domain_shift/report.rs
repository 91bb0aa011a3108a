//! Results: per-run records, mean and spread over seeds, tables, CSV files, the chart and the
//! verdict.

use std::fmt::Write as _;
use std::path::Path;

use crate::Variant;
use crate::chart::{self, Canvas, Series};
use crate::data::{CLASSES, Domain};

/// The outcome of training one variant with one seed.
#[derive(Clone, Debug)]
pub struct Run {
    /// Network variant.
    pub variant: Variant,
    /// Seed of initialisation, training data and data order.
    pub seed: u64,
    /// Accuracy per domain, in [`Domain::ALL`] order (source first).
    pub accuracy: Vec<f64>,
    /// Mean training loss of the last steps.
    pub final_loss: f32,
    /// Training time in seconds.
    pub train_secs: f64,
}

impl Run {
    /// In-domain accuracy.
    pub fn in_domain(&self) -> f64 {
        self.accuracy[0]
    }

    /// Mean accuracy over the shifted domains.
    pub fn shifted(&self) -> f64 {
        let shifts = &self.accuracy[1..];
        shifts.iter().sum::<f64>() / shifts.len() as f64
    }

    /// In-domain minus shifted accuracy.
    pub fn drop(&self) -> f64 {
        self.in_domain() - self.shifted()
    }

    /// One progress line.
    pub fn line(&self) -> String {
        format!(
            "{:<7} seed {}: loss {:.3}, in-domain {:.3}, shifted {:.3}, drop {:.3} ({:.0} s)",
            self.variant.name(),
            self.seed,
            self.final_loss,
            self.in_domain(),
            self.shifted(),
            self.drop(),
            self.train_secs
        )
    }
}

/// Mean and sample standard deviation (0 for a single value).
pub fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() < 2 {
        return (mean, 0.0);
    }
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0);
    (mean, var.sqrt())
}

/// Per-variant statistics over seeds.
#[derive(Clone, Debug)]
pub struct VariantSummary {
    /// The variant.
    pub variant: Variant,
    /// Number of seeds.
    pub seeds: usize,
    /// `(mean, std)` per domain, in [`Domain::ALL`] order.
    pub domains: Vec<(f64, f64)>,
    /// `(mean, std)` of the mean shifted accuracy.
    pub shifted: (f64, f64),
    /// `(mean, std)` of the drop (in-domain minus shifted).
    pub drop: (f64, f64),
}

/// Statistics of every variant.
#[derive(Clone, Debug)]
pub struct Summary {
    /// One entry per variant, in [`Variant::ALL`] order.
    pub variants: Vec<VariantSummary>,
}

fn pm((mean, std): (f64, f64)) -> String {
    format!("{mean:.3} ± {std:.3}")
}

impl Summary {
    /// Aggregates `runs` per variant.
    pub fn new(runs: &[Run]) -> Self {
        let variants = Variant::ALL
            .iter()
            .map(|&variant| {
                let mine: Vec<&Run> = runs.iter().filter(|r| r.variant == variant).collect();
                let column = |f: &dyn Fn(&Run) -> f64| {
                    mean_std(&mine.iter().map(|r| f(r)).collect::<Vec<_>>())
                };
                VariantSummary {
                    variant,
                    seeds: mine.len(),
                    domains: (0..Domain::ALL.len())
                        .map(|d| column(&|r| r.accuracy[d]))
                        .collect(),
                    shifted: column(&Run::shifted),
                    drop: column(&Run::drop),
                }
            })
            .collect();
        Self { variants }
    }

    /// The variant with the highest mean shifted accuracy.
    pub fn best(&self) -> &VariantSummary {
        self.variants
            .iter()
            .max_by(|a, b| a.shifted.0.total_cmp(&b.shifted.0))
            .expect("at least one variant")
    }

    /// Markdown table: in-domain, shifted and drop per variant.
    pub fn main_table(&self) -> String {
        let seeds = self.variants.first().map_or(0, |v| v.seeds);
        let mut t = format!(
            "Accuracy, mean ± std over {seeds} seed(s) (shifted = mean over the {} shifted domains):\n\n",
            Domain::shifts().len()
        );
        t.push_str("| variant | in-domain | shifted | drop |\n|---|---:|---:|---:|\n");
        for v in &self.variants {
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} |",
                v.variant.name(),
                pm(v.domains[0]),
                pm(v.shifted),
                pm(v.drop)
            );
        }
        t
    }

    /// Markdown table: accuracy per domain and variant.
    pub fn domain_table(&self) -> String {
        let mut t = String::from("Accuracy per domain:\n\n| domain |");
        for v in &self.variants {
            let _ = write!(t, " {} |", v.variant.name());
        }
        t.push_str("\n|---|");
        t.push_str(&"---:|".repeat(self.variants.len()));
        t.push('\n');
        for (d, domain) in Domain::ALL.iter().enumerate() {
            let marker = if domain.is_affine() { " (affine)" } else { "" };
            let _ = write!(t, "| {}{marker} |", domain.name());
            for v in &self.variants {
                let _ = write!(t, " {} |", pm(v.domains[d]));
            }
            t.push('\n');
        }
        t
    }

    /// The final line: which variant generalised best, and whether the margin exceeds the
    /// seed spread.
    pub fn verdict(&self) -> String {
        let best = self.best();
        let runner_up = self
            .variants
            .iter()
            .filter(|v| v.variant != best.variant)
            .max_by(|a, b| a.shifted.0.total_cmp(&b.shifted.0));
        let mut line = format!(
            "Best generalisation: {} (shifted accuracy {}, drop {})",
            best.variant.name(),
            pm(best.shifted),
            pm(best.drop)
        );
        if let Some(r) = runner_up {
            let margin = best.shifted.0 - r.shifted.0;
            let spread = best.shifted.1.max(r.shifted.1);
            let _ = write!(
                line,
                "; {:.3} ahead of {} ({}",
                margin,
                r.variant.name(),
                if best.seeds < 2 {
                    "one seed: no spread to compare with)".to_string()
                } else if margin > 2.0 * spread {
                    "more than twice the seed std)".to_string()
                } else {
                    "within twice the seed std)".to_string()
                }
            );
        }
        line.push('.');
        line
    }
}

fn csv_error(path: &Path, e: std::io::Error) -> String {
    format!("cannot write {}: {e}", path.display())
}

/// Writes `results.csv`: one row per variant, seed and domain.
pub fn write_results_csv(path: &Path, runs: &[Run]) -> Result<(), String> {
    let mut s = String::from("variant,seed,domain,accuracy\n");
    for run in runs {
        for (domain, acc) in Domain::ALL.iter().zip(&run.accuracy) {
            let _ = writeln!(
                s,
                "{},{},{},{acc:.4}",
                run.variant.name(),
                run.seed,
                domain.name()
            );
        }
    }
    std::fs::write(path, s).map_err(|e| csv_error(path, e))
}

/// Writes `summary.csv`: per variant and metric (each domain, `shifted`, `drop`), the mean
/// and std over seeds.
pub fn write_summary_csv(path: &Path, summary: &Summary) -> Result<(), String> {
    let mut s = String::from("variant,metric,mean,std,seeds\n");
    for v in &summary.variants {
        let metrics = Domain::ALL
            .iter()
            .map(|d| d.name())
            .zip(v.domains.iter().copied())
            .chain([("shifted", v.shifted), ("drop", v.drop)]);
        for (metric, (mean, std)) in metrics {
            let _ = writeln!(
                s,
                "{},{metric},{mean:.4},{std:.4},{}",
                v.variant.name(),
                v.seeds
            );
        }
    }
    std::fs::write(path, s).map_err(|e| csv_error(path, e))
}

/// The bar chart: accuracy per domain (and the shifted mean) per variant, with std bars.
pub fn chart(summary: &Summary, seeds: usize) -> Canvas {
    let mut groups: Vec<String> = Domain::ALL.iter().map(|d| d.name().to_string()).collect();
    groups.push("shifted".into());
    let colours = [[150, 150, 150], [66, 133, 244], [234, 134, 36]];
    let series = summary
        .variants
        .iter()
        .zip(colours)
        .map(|(v, colour)| {
            let mut values = v.domains.clone();
            values.push(v.shifted);
            Series {
                name: v.variant.name().to_string(),
                colour,
                values,
            }
        })
        .collect::<Vec<_>>();
    let title = format!("Accuracy per domain, mean and std over {seeds} seed(s)");
    chart::bar_chart(&title, &groups, &series, 1.0 / CLASSES.len() as f64)
}
