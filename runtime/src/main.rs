//! The `cellbox` command line. See `cellbox --help`.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}
