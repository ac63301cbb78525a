//! A UDP flood for the attack benchmark (`benches/attack.sh`): sends one SIP
//! OPTIONS datagram to TARGET from SOURCE_IP at RATE per second for SECS
//! seconds (paced per millisecond), then prints what it sent. Bounded in rate
//! and time; for loopback addresses only.
//!
//!   usage: flood TARGET SOURCE_IP RATE SECS

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, source, rate, secs] = args.as_slice() else {
        return Err("usage: flood TARGET SOURCE_IP RATE SECS".into());
    };
    let target: SocketAddr = target.parse()?;
    let source: std::net::IpAddr = source.parse()?;
    if !target.ip().is_loopback() || !source.is_loopback() {
        return Err("loopback addresses only".into());
    }
    let (rate, secs): (u64, u64) = (rate.parse()?, secs.parse::<u64>()?.min(60));
    let socket = UdpSocket::bind((source, 0))?;
    let local = socket.local_addr()?;
    let msg = format!(
        "OPTIONS sip:flood@{target} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK-flood\r\n\
         From: <sip:flood@{local}>;tag=f\r\nTo: <sip:flood@{target}>\r\nCall-ID: flood@{local}\r\n\
         CSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut sent = 0u64;
    while Instant::now() < end {
        let due = start.elapsed().as_micros() as u64 * rate / 1_000_000;
        while sent < due {
            let _ = socket.send_to(msg.as_bytes(), target);
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} datagrams in {elapsed:.1} s: {:.0}/s",
        sent as f64 / elapsed
    );
    Ok(())
}
