//! One module per `plumb` subcommand.

pub mod data;
pub mod decode;
pub mod export;
pub mod info;
pub mod models;
pub mod multiobj;
pub mod overopt;
pub mod policy;
pub mod process;
pub mod reward;
pub mod rl;
pub mod texts;
