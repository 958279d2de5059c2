"""The documented exit codes (a leaf: every command imports these, and this imports nothing)."""
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

EXIT_CODES_HELP = "exit codes: 0 ok, 1 the job failed or found problems, 2 bad usage or bad input, 130 interrupted"
