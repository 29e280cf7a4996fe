//! The `cellbox` command line. See `cellbox --help` and [`cellbox::cli`].

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(cellbox::cli::run(std::env::args_os()))
}
