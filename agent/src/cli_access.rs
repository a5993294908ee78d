//! `tidemark user ...` and `tidemark token ...`: the management API's
//! users and tokens from the appliance's console. Changes are refused
//! anywhere but a local console line (tty1, ttyS0), as support SSH's
//! enable is: the first administrator is made here (later ones also by
//! an admin through the API, with password and TOTP). Every change is in
//! the audit trail.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use tidemark::access::{users, Role};
use tidemark::config::Config;

#[derive(clap::Subcommand)]
pub enum UserCommand {
    /// Add a user (console only). Asks for the password twice without
    /// echo, or takes an argon2id hash. For dr-admin and admin it prints
    /// the TOTP enrolment URI once: add it to an authenticator app now.
    Add {
        #[arg(long)]
        config: PathBuf,
        /// The user's name: letters, digits, '-', '_', '.'.
        name: String,
        /// viewer, operator, dr-admin or admin.
        #[arg(long)]
        role: String,
        /// An argon2id PHC string (`$argon2id$v=19$...`) instead of a password.
        #[arg(long, value_name = "PHC")]
        password_hash: Option<String>,
        #[command(flatten)]
        test_hooks: AccessTestHooks,
    },
    /// List users: role, second factor, lock (never a hash or a secret).
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Delete a user (console only); the running API ends its sessions at
    /// their next request.
    Delete(Named),
    /// Unlock an account locked by wrong logins (console only).
    Unlock(Named),
    /// Print the argon2id hash of a password (asked twice without echo, or
    /// one line from a stdin that is not a terminal): for the OVF property
    /// tidemark.api.admin_password_hash or `user add --password-hash`.
    /// Runs anywhere; changes nothing.
    Hash,
}

#[derive(clap::Subcommand)]
pub enum TokenCommand {
    /// Make an API token for automation (console only) and print it once.
    /// Tokens are viewer or operator: failover and user changes need a
    /// person with a second factor.
    Add {
        #[arg(long)]
        config: PathBuf,
        name: String,
        #[arg(long)]
        role: String,
        /// How long it works, like "30d" or "12h" (at most 366d).
        #[arg(long, value_name = "DURATION")]
        expires: String,
        #[command(flatten)]
        test_hooks: AccessTestHooks,
    },
    /// List tokens: name, role, expiry (never the token).
    List {
        #[arg(long)]
        config: PathBuf,
    },
    /// Delete a token (console only): it stops working at once.
    Delete(Named),
}

/// Tests only (the test build, `--features test-build`): accept a stdin
/// that is not a console line. The shipped binary does not know the flag.
#[derive(clap::Args, Default)]
pub struct AssumeConsole {
    #[cfg(feature = "test-build")]
    #[arg(long, hide = true)]
    assume_console: bool,
}

impl AssumeConsole {
    pub fn assume(&self) -> bool {
        #[cfg(feature = "test-build")]
        return self.assume_console;
        #[cfg(not(feature = "test-build"))]
        false
    }
}

/// What the tests need of these commands: only in the test build.
#[derive(clap::Args, Default)]
pub struct AccessTestHooks {
    #[command(flatten)]
    console: AssumeConsole,
    /// Tests only: read the password from stdin, one line.
    #[cfg(feature = "test-build")]
    #[arg(long, hide = true)]
    password_stdin: bool,
}

impl AccessTestHooks {
    fn password_stdin(&self) -> bool {
        #[cfg(feature = "test-build")]
        return self.password_stdin;
        #[cfg(not(feature = "test-build"))]
        false
    }
}

/// A console change's target: which config, which user or token.
#[derive(clap::Args)]
pub struct Named {
    #[arg(long)]
    config: PathBuf,
    name: String,
    #[command(flatten)]
    test_hooks: AccessTestHooks,
}

fn on_console(hooks: &AccessTestHooks, what: &str) -> Result<()> {
    match tidemark::harden::support_ssh::console_tty() {
        Ok(_) => Ok(()),
        Err(_) if hooks.console.assume() => Ok(()),
        Err(e) => Err(e).with_context(|| format!("{what} is done at the appliance's console")),
    }
}

fn data_dir(config: &Path) -> Result<PathBuf> {
    Ok(Config::load(config)?.node().data_dir.clone())
}

/// Runs a console change with its request and outcome in the audit trail.
fn audited(data_dir: &Path, op: &str, params: serde_json::Value, run: impl FnOnce() -> Result<()>) -> Result<()> {
    tidemark::audit_trail::audited(data_dir, &tidemark::audit_trail::Actor::console(), op, params, run)
}

fn read_password(hooks: &AccessTestHooks) -> Result<String> {
    if hooks.password_stdin() {
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_string());
    }
    let first = prompt_hidden("password: ")?;
    users::validate_password(&first)?;
    if prompt_hidden("again: ")? != first {
        bail!("the two passwords differ; nothing was changed");
    }
    Ok(first)
}

/// Reads one line from the terminal with echo off (and back on after).
pub fn prompt_hidden(prompt: &str) -> Result<String> {
    use rustix::termios::{tcgetattr, tcsetattr, LocalModes, OptionalActions};
    use std::io::Write;
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).context("the password is asked on the terminal")?;
    let mut quiet = saved.clone();
    quiet.local_modes.remove(LocalModes::ECHO);
    eprint!("{prompt}");
    std::io::stderr().flush()?;
    tcsetattr(&stdin, OptionalActions::Flush, &quiet)?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    tcsetattr(&stdin, OptionalActions::Flush, &saved)?;
    eprintln!();
    read?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

pub fn user(command: UserCommand) -> Result<()> {
    match command {
        UserCommand::Add { config, name, role, password_hash, test_hooks } => {
            on_console(&test_hooks, "adding a user")?;
            let role = Role::parse(&role).context("--role")?;
            tidemark::config::validate_name("user", &name)?;
            let dir = data_dir(&config)?;
            let hash = match password_hash {
                Some(h) => {
                    users::validate_hash(&h).context("--password-hash")?;
                    h
                }
                None => {
                    let password = read_password(&test_hooks)?;
                    users::validate_password(&password)?;
                    users::hash_password(&password)?
                }
            };
            let params = serde_json::json!({ "name": name, "role": role });
            let mut uri = None;
            audited(&dir, "user add", params, || {
                uri = users::add_user(&dir, &name, role, hash, &tidemark::harden::support_ssh::who())?.totp_uri;
                Ok(())
            })?;
            println!("user {name} added with role {role}");
            if let Some(uri) = uri {
                println!("TOTP enrolment, shown once; add it to an authenticator app now:");
                println!("{uri}");
            }
        }
        UserCommand::Hash => {
            let password = if rustix::termios::isatty(std::io::stdin()) {
                read_password(&AccessTestHooks::default())?
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line.trim_end_matches(['\r', '\n']).to_string()
            };
            users::validate_password(&password)?;
            println!("{}", users::hash_password(&password)?);
        }
        UserCommand::List { config } => {
            let store = users::load(&data_dir(&config)?)?;
            println!("{:<24} {:<10} {:<5} LOCKED", "USER", "ROLE", "TOTP");
            for u in users::list_users(&store) {
                let totp = if u.totp { "yes" } else { "no" };
                println!("{:<24} {:<10} {:<5} {}", u.name, u.role, totp, u.locked.as_deref().unwrap_or("-"));
            }
        }
        UserCommand::Delete(Named { config, name, test_hooks }) => {
            on_console(&test_hooks, "deleting a user")?;
            let dir = data_dir(&config)?;
            audited(&dir, "user delete", serde_json::json!({ "name": name }), || Ok(users::delete_user(&dir, &name)?))?;
            println!("user {name} deleted");
        }
        UserCommand::Unlock(Named { config, name, test_hooks }) => {
            on_console(&test_hooks, "unlocking a user")?;
            let dir = data_dir(&config)?;
            let mut was = false;
            audited(&dir, "user unlock", serde_json::json!({ "name": name }), || {
                was = users::unlock_user(&dir, &name)?;
                Ok(())
            })?;
            match was {
                true => println!("user {name} unlocked"),
                false => println!("user {name} was not locked"),
            }
        }
    }
    Ok(())
}

pub fn token(command: TokenCommand) -> Result<()> {
    match command {
        TokenCommand::Add { config, name, role, expires, test_hooks } => {
            on_console(&test_hooks, "making a token")?;
            let role = Role::parse(&role).context("--role")?;
            let lifetime = humantime::parse_duration(&expires).with_context(|| format!("--expires {expires:?}"))?;
            users::validate_token(role, lifetime).context("--role, --expires")?;
            let dir = data_dir(&config)?;
            let params = serde_json::json!({ "name": name, "role": role, "expires": expires });
            let mut token = String::new();
            audited(&dir, "token add", params, || {
                token = users::add_token(&dir, &name, role, lifetime, &tidemark::harden::support_ssh::who())?;
                Ok(())
            })?;
            eprintln!("token {name} ({role}) made; shown once, keep it in a secret store:");
            println!("{token}");
        }
        TokenCommand::List { config } => {
            let store = users::load(&data_dir(&config)?)?;
            println!("{:<24} {:<10} EXPIRES (UTC)", "TOKEN", "ROLE");
            for t in users::list_tokens(&store) {
                println!("{:<24} {:<10} {}", t.name, t.role, tidemark::status::format_time_ms(t.expires_ms));
            }
        }
        TokenCommand::Delete(Named { config, name, test_hooks }) => {
            on_console(&test_hooks, "deleting a token")?;
            let dir = data_dir(&config)?;
            audited(&dir, "token delete", serde_json::json!({ "name": name }), || {
                Ok(users::delete_token(&dir, &name)?)
            })?;
            println!("token {name} deleted");
        }
    }
    Ok(())
}
