//! `weft app tcp`: a TCP echo server; every byte received is written back.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Arguments of `weft app tcp`.
#[derive(clap::Args)]
pub struct Args {
    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, default_value = "0.0.0.0:9000")]
    listen: SocketAddr,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|e| anyhow::anyhow!("--listen {}: {e}", args.listen))?;
    super::announce("tcp echo", listener.local_addr()?);
    loop {
        let (mut stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let (mut reader, mut writer) = stream.split();
            // Errors just end this connection.
            let _ = tokio::io::copy(&mut reader, &mut writer).await;
        });
    }
}
