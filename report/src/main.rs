fn main() -> std::process::ExitCode {
    berth_core::cli::main("berth-report", berth_report::run)
}
