fn main() -> std::process::ExitCode {
    berth_core::cli::main("berth-backup", berth_backup::run)
}
