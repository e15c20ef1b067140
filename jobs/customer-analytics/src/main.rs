//! The `customer-analytics` binary: `customer-analytics --help`.

fn main() -> std::process::ExitCode {
    customer_analytics::main()
}
