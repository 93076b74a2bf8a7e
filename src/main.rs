fn main() -> std::process::ExitCode {
    pocketses::cli::main()
}
