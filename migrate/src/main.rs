fn main() -> std::process::ExitCode {
    berth_core::cli::main("berth-migrate", berth_migrate::run)
}
