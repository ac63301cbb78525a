//! baresip as a real phone: a config and account per instance, a tone it
//! sends (made with sox), and what it received, measured with sox.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub fn baresip_dir(
    root: &Path,
    name: &str,
    sip_port: u16,
    rtp: u16,
    user: &str,
    pbx: u16,
    // (Hz, seconds) of the tone this phone sends.
    tone: (u32, u32),
) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("rec")).expect("dirs");
    let config = format!(
        "poll_method epoll\nsip_listen 127.0.0.1:{sip_port}\nnet_interface 127.0.0.1\ncall_local_timeout 120\n\
         audio_player aubridge,discard\naudio_source aufile,in.wav\naudio_alert aubridge,discard\n\
         ausrc_srate 8000\nauplay_srate 8000\nausrc_channels 1\nauplay_channels 1\naudio_level no\nsnd_path rec\n\
         rtp_ports {rtp}-{}\nrtcp_mux no\njitter_buffer_delay 5-10\nrtp_stats yes\n\
         module_path /usr/lib/baresip/modules\nmodule g711.so\nmodule aufile.so\nmodule aubridge.so\nmodule sndfile.so\n\
         module_tmp account.so\nmodule_app menu.so\n",
        rtp + 19
    );
    std::fs::write(dir.join("config"), config).expect("config");
    std::fs::write(
        dir.join("accounts"),
        format!("<sip:{user}@127.0.0.1:{pbx}>;auth_pass=pw{user};answermode=auto;audio_codecs=PCMU;regint=600\n"),
    )
    .expect("accounts");
    let ok = Command::new("sox")
        .args(["-n", "-r", "8000", "-c", "1", "-b", "16"])
        .arg(dir.join("in.wav"))
        .args([
            "synth",
            &tone.1.to_string(),
            "sine",
            &tone.0.to_string(),
            "vol",
            "0.5",
        ])
        .status()
        .expect("sox");
    assert!(ok.success(), "sox could not make the tone");
    dir
}

pub fn baresip(dir: &Path, secs: u32, extra: &[&str]) -> std::process::Child {
    Command::new("timeout")
        .arg((secs + 15).to_string())
        .args(["baresip", "-f", ".", "-s", "-t", &secs.to_string()])
        .args(extra)
        .current_dir(dir)
        .stdout(Stdio::from(
            std::fs::File::create(dir.join("log")).expect("log"),
        ))
        .stderr(Stdio::null())
        .stdin(Stdio::null())
        .spawn()
        .expect("start baresip")
}

/// Waits (up to 15 s) until the baresip in `dir` has registered.
pub fn wait_registered(dir: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let log = std::fs::read_to_string(dir.join("log")).unwrap_or_default();
        if log.contains("200 OK") && log.contains("binding") {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// (length in seconds, rough dominant frequency in Hz) of a WAV, from `sox stat`.
pub fn measure(wav: &Path) -> (f64, f64) {
    let out = Command::new("sox")
        .arg(wav)
        .args(["-n", "stat"])
        .output()
        .expect("sox stat");
    let text = String::from_utf8_lossy(&out.stderr).into_owned();
    let field = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    (field("Length (seconds)"), field("Rough   frequency"))
}

pub fn received(dir: &Path) -> Option<std::path::PathBuf> {
    std::fs::read_dir(dir.join("rec"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"))
}

/// `(seconds, rough frequency)` of a stretch of a WAV.
pub fn measure_part(wav: &Path, from: f64, secs: f64) -> (f64, f64) {
    let part = wav.with_extension(format!("part{from}.wav"));
    let ok = Command::new("sox")
        .arg(wav)
        .arg(&part)
        .args(["trim", &from.to_string(), &secs.to_string()])
        .status()
        .expect("sox trim");
    assert!(ok.success());
    measure(&part)
}
