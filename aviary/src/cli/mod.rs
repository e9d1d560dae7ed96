//! The operator's subcommands, beside the server roles: `config check`, `token`,
//! `completions`, `healthcheck`, and the `--config` file every command reads. One file each;
//! none of them starts a server.

pub mod check;
pub mod completions;
pub mod config_file;
pub mod healthcheck;
pub mod https;
pub mod token;
