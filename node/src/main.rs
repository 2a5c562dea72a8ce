//! The `trellis` binary: parses the command line and hands off to the library.

fn main() -> std::process::ExitCode {
    trellis_node::cli::main()
}
