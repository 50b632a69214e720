//! Prints `analyze_dir`'s report for a directory, with lines (`{:#}`), the
//! same engine `weft analyze DIR` uses. Exit status 1 when there are errors.
//!
//! Run: `cargo run -p weft-api --example analyze -- DIR`

fn main() {
    let Some(dir) = std::env::args().nth(1) else {
        eprintln!("usage: analyze DIR");
        std::process::exit(2);
    };
    match weft_api::analyze_dir(&dir) {
        Ok(report) => {
            for p in &report.problems {
                println!("{p:#}");
            }
            eprintln!(
                "{} files, {} objects, {} errors, {} warnings",
                report.files,
                report.objects,
                report.errors().count(),
                report.warnings().count()
            );
            std::process::exit(i32::from(report.has_errors()));
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    }
}
