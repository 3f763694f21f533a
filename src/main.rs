//! The `dirbridge` binary: a thin shell over the library.
fn main() {
    std::process::exit(dirbridge::cli::main());
}
