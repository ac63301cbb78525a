//! Voice messages: one side's audio as the relay receives it (G.711 decoded
//! to 16-bit PCM), up to a limit, saved as a WAV file that is on disk —
//! written, synced, renamed into place, its directory synced — before anyone
//! hears of it, so a crash leaves either the whole file or none. A recording
//! that holds no audio (nothing, or only silence) is not saved.

use super::prompt::{alaw_to_linear, ulaw_to_linear, wav_pcm16, FRAME};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A 20 ms frame louder than this (RMS of 16-bit samples, about −44 dBFS) is
/// audio, not line silence or comfort noise.
const AUDIO_RMS: f64 = 200.0;

/// A recording shorter than this holds no message.
const MIN_AUDIO: Duration = Duration::from_millis(500);

/// Samples being recorded.
#[derive(Debug)]
pub struct Recording {
    /// The voice message's id (its file name).
    pub id: u64,
    samples: Vec<i16>,
    max: usize,
}

impl Recording {
    pub fn new(id: u64, max: Duration) -> Recording {
        let max = usize::try_from(max.as_millis() * 8).unwrap_or(usize::MAX);
        Recording {
            id,
            samples: Vec::with_capacity(max.min(8000 * 60)),
            max,
        }
    }

    /// Adds one RTP payload of type `pt` (0 PCMU, 8 PCMA; others are not
    /// audio and are skipped); `false` once the limit is reached.
    pub fn push(&mut self, pt: u8, payload: &[u8]) -> bool {
        let room = self.max.saturating_sub(self.samples.len());
        let take = &payload[..payload.len().min(room)];
        match pt {
            0 => self.samples.extend(take.iter().map(|u| ulaw_to_linear(*u))),
            8 => self.samples.extend(take.iter().map(|a| alaw_to_linear(*a))),
            _ => {}
        }
        self.samples.len() < self.max
    }

    pub fn duration(&self) -> Duration {
        Duration::from_millis(self.samples.len() as u64 / 8)
    }

    /// Whether it is long enough and some frame in it is louder than silence.
    pub fn has_audio(&self) -> bool {
        self.duration() >= MIN_AUDIO
            && self.samples.chunks(FRAME).any(|f| {
                let power: f64 = f.iter().map(|s| f64::from(*s).powi(2)).sum();
                (power / f.len() as f64).sqrt() > AUDIO_RMS
            })
    }

    /// Saves it as `dir/<id>.wav` when it holds audio (`Ok(false)`: nothing to
    /// keep). The file is complete and durable when this returns `Ok(true)`.
    pub fn save(&self, dir: &Path) -> std::io::Result<bool> {
        if !self.has_audio() {
            return Ok(false);
        }
        write_durably(&path(dir, self.id), &wav_pcm16(&self.samples))?;
        Ok(true)
    }
}

/// Writes `bytes` to `path` whole or not at all: written beside it, synced,
/// renamed into place, its directory synced (created if need be).
pub fn write_durably(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("part");
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// Where voice message `id` is kept under `dir`.
pub fn path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id}.wav"))
}

#[cfg(test)]
mod tests {
    use super::super::prompt::{linear_to_ulaw, Prompt};
    use super::*;

    fn tone(ms: usize) -> Vec<u8> {
        (0..ms * 8)
            .map(|i| {
                let v = (i as f32 * std::f32::consts::TAU * 440.0 / 8000.0).sin() * 8000.0;
                linear_to_ulaw(v as i16)
            })
            .collect()
    }

    #[test]
    fn a_message_with_audio_is_saved_whole_and_reads_back_as_a_wav() {
        let dir = tempfile::tempdir().expect("dir");
        let mut r = Recording::new(7, Duration::from_secs(60));
        for chunk in tone(2000).chunks(160) {
            assert!(r.push(0, chunk));
        }
        assert!(r.push(101, &[1, 0x8a, 0, 160]), "DTMF is not audio");
        assert_eq!(r.duration(), Duration::from_secs(2));
        assert!(r.save(dir.path()).expect("save"));
        let bytes = std::fs::read(path(dir.path(), 7)).expect("file");
        let p = Prompt::from_wav(&bytes).expect("a valid WAV");
        assert_eq!(p.duration(), Duration::from_secs(2));
        assert!(!dir.path().join("7.wav.part").exists());
    }

    #[test]
    fn silence_is_not_kept_and_the_limit_cuts_the_message() {
        let dir = tempfile::tempdir().expect("dir");
        let mut quiet = Recording::new(1, Duration::from_secs(60));
        quiet.push(0, &[0xFF; 8000 * 3]); // mu-law silence
        assert!(!quiet.has_audio());
        assert!(!quiet.save(dir.path()).expect("save"));
        assert!(!path(dir.path(), 1).exists());
        let mut short = Recording::new(2, Duration::from_secs(1));
        let audio = tone(1500);
        assert!(!short.push(0, &audio), "full");
        assert_eq!(short.duration(), Duration::from_secs(1));
        assert!(short.has_audio());
    }
}
