//! `aviary completions <shell>`: the completion script clap_complete generates from the same
//! definitions `--help` prints, so it cannot drift from the flags.

use clap::CommandFactory;

use crate::args::Cli;

pub fn print(shell: clap_complete::Shell) {
    clap_complete::generate(shell, &mut Cli::command(), "aviary", &mut std::io::stdout());
}
