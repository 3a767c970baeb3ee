fn main() -> std::process::ExitCode {
    berth_core::cli::main("berth-rollback", berth_rollback::run)
}
