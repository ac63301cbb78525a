//! Embedding sipdesk in your own binary: build a config in code, start the PBX on
//! loopback with a private data directory, and watch registrations.
//!
//!     cargo run --example embed
//!
//! Then register a softphone as extension 100, password "change-me", to
//! 127.0.0.1:5080. Stop with Ctrl-C.

use sipdesk::config::Config;
use sipdesk::Pbx;
use sipdesk::UnixMillis;
use std::time::Duration;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let config = Config::parse(
        r#"
        [sip]
        udp = ["127.0.0.1:5080"]
        tcp = ["127.0.0.1:5080"]
        domain = "example.internal"
        [demo]
        extensions = []
        [[users]]
        extension = "100"
        name = "Front desk"
        password = "change-me"
        "#,
        "example",
    )?;
    let data = std::env::temp_dir().join("sipdesk-embed-example");
    let pbx = Pbx::builder(config).data_dir(&data).start().await?;
    println!("SIP on {:?}, data in {}", pbx.udp_addrs(), data.display());
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let bindings = pbx.registrar().lookup("100", UnixMillis::now());
                println!("extension 100: {} binding(s) {:?}", bindings.len(),
                    bindings.iter().map(|b| &b.contact).collect::<Vec<_>>());
            }
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    pbx.shutdown().await?;
    Ok(())
}
