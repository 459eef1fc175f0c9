//! `ferrofn-images`: builds the function images (`ferrofn/{testfn,hello,status}:<tag>`, the tag from
//! `FERROFN_IMAGE_TAG`, else this checkout's own; `make images` sets `latest`) on the
//! local Docker engine and prints each tag, id and size.
//!
//! Usage: `cargo run -p ferrofn-tests --bin ferrofn-images -- [--only testfn,hello] [--force]`
#![forbid(unsafe_code)]

use anyhow::{Context, Result, bail};
use ferrofn_tests::{
    docker,
    images::{FnImage, ensure_image_with},
};

struct Args {
    only: Vec<FnImage>,
    force: bool,
}

const USAGE: &str = "usage: ferrofn-images [--only testfn,hello,status] [--force]";

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Args> {
    let mut parsed = Args {
        only: FnImage::ALL.to_vec(),
        force: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let list = match arg.as_str() {
            "--force" => {
                parsed.force = true;
                continue;
            }
            "--only" => args.next().context("--only needs a value")?,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => match other.strip_prefix("--only=") {
                Some(list) => list.to_owned(),
                None => bail!("unexpected argument {other:?}\n{USAGE}"),
            },
        };
        parsed.only = list
            .split(',')
            .filter(|s| !s.trim().is_empty())
            .map(|s| s.trim().parse())
            .collect::<Result<_>>()?;
    }
    Ok(parsed)
}

fn human_size(bytes: i64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = parse_args(std::env::args().skip(1))?;
    let docker = docker::connect().await?;
    for which in args.only {
        eprintln!("==> {} ({})", which.tag(), which.package());
        let progress = |line: &str| eprintln!("    {line}");
        let image = ensure_image_with(&docker, which, args.force, Some(&progress)).await?;
        let state = if image.rebuilt { "built" } else { "up to date" };
        println!(
            "{}\t{}\t{} ({} bytes)\t{state}",
            image.tag,
            image.id,
            human_size(image.size),
            image.size
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn parses_only_and_force() {
        let all = parse_args(strings(&[])).unwrap();
        assert_eq!(all.only, FnImage::ALL.to_vec());
        assert!(!all.force);
        let some = parse_args(strings(&["--only", "hello,status", "--force"])).unwrap();
        assert_eq!(some.only, vec![FnImage::Hello, FnImage::Status]);
        assert!(some.force);
        let eq = parse_args(strings(&["--only=testfn"])).unwrap();
        assert_eq!(eq.only, vec![FnImage::Testfn]);
        assert!(parse_args(strings(&["--only", "nope"])).is_err());
        assert!(parse_args(strings(&["--bogus"])).is_err());
    }
}
