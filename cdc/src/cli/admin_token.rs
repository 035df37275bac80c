//! `pgcdc admin-token`: prints the admin API's token (admin.token, or the one pgcdc
//! generated into the state directory), or the status page's address carrying it.
//! Reading it takes what reading the state directory takes: the user pgcdc runs as.

use clap::Args;

use crate::config::Config;

/// `pgcdc admin-token` arguments.
#[derive(Debug, Args)]
pub struct AdminTokenArgs {
    /// Config file.
    #[arg(long, short)]
    pub(crate) config: std::path::PathBuf,
    /// Print the status page's address with the token in its fragment (`#token=...`,
    /// which the browser never sends to the server); open it to act from the page.
    #[arg(long)]
    pub(crate) url: bool,
}

/// Runs `pgcdc admin-token`; returns the exit code.
pub(crate) fn admin_token(args: AdminTokenArgs) -> anyhow::Result<i32> {
    let config = Config::load(&args.config)?;
    let token = crate::admin::token::current(&config)?;
    if args.url {
        let addr = config.admin.listen_addr()?;
        // An unspecified address listens on loopback too.
        let host = match addr.ip() {
            std::net::IpAddr::V4(ip) if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) if ip.is_unspecified() => "[::1]".to_string(),
            std::net::IpAddr::V4(ip) => ip.to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        };
        println!("http://{host}:{}/#token={}", addr.port(), token.expose());
    } else {
        println!("{}", token.expose());
    }
    Ok(0)
}
