//! Prompts: sounds the PBX plays to callers (hold music, announcements,
//! confirmation beeps), kept ready as 20 ms G.711 frames in both laws so a
//! player only copies bytes. Read from WAV files (8 kHz mono, 16-bit PCM or G.711)
//! or synthesised: the built-in sounds are generated here, so the project ships
//! no binary audio.

use std::f32::consts::TAU;

/// Samples per 20 ms frame at 8 kHz.
pub const FRAME: usize = 160;
/// The longest WAV accepted (10 minutes at 8 kHz).
const MAX_SAMPLES: usize = 8000 * 600;

/// Whose telephone network's tones the PBX plays (`calls.tone_zone`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToneZone {
    /// North America: 440 + 480 Hz, 2 s on, 4 s off.
    #[default]
    Us,
    /// Most of Europe (CEPT): 425 Hz, 1 s on, 4 s off.
    Eu,
    /// The United Kingdom: 400 + 450 Hz, twice 0.4 s, then 2 s off.
    Uk,
    /// Japan: 400 Hz modulated at 16 Hz, 1 s on, 2 s off.
    Jp,
}

/// Why a WAV file cannot be played.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WavError {
    #[error("not a RIFF/WAVE file")]
    NotWave,
    #[error("no `{0}` chunk")]
    Missing(&'static str),
    #[error("unsupported format: {0} (need 8 kHz mono 16-bit PCM, A-law or mu-law)")]
    Unsupported(String),
    #[error("no audio")]
    Empty,
    #[error("longer than 10 minutes")]
    TooLong,
}

/// A sound as G.711 frames, in both laws.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Payload type 0 (PCMU), a whole number of frames.
    ulaw: Vec<u8>,
    /// Payload type 8 (PCMA).
    alaw: Vec<u8>,
}

impl Prompt {
    /// From linear 16-bit samples at 8 kHz (padded with silence to whole frames).
    pub fn from_linear(samples: &[i16]) -> Prompt {
        let mut samples = samples.to_vec();
        let pad = (FRAME - samples.len() % FRAME) % FRAME;
        samples.extend(std::iter::repeat_n(0, pad));
        Prompt {
            ulaw: samples.iter().map(|s| linear_to_ulaw(*s)).collect(),
            alaw: samples.iter().map(|s| linear_to_alaw(*s)).collect(),
        }
    }

    /// Reads a WAV file's bytes: 8 kHz mono, format 1 (16-bit PCM), 6 (A-law) or
    /// 7 (mu-law), also inside WAVE_FORMAT_EXTENSIBLE.
    pub fn from_wav(bytes: &[u8]) -> Result<Prompt, WavError> {
        if bytes.len() < 12 || &bytes[0..4] != b"RIFF" || &bytes[8..12] != b"WAVE" {
            return Err(WavError::NotWave);
        }
        let mut rest = &bytes[12..];
        let mut fmt: Option<(u16, u16, u32, u16)> = None;
        let mut data: Option<&[u8]> = None;
        while rest.len() >= 8 && data.is_none() {
            let id = &rest[0..4];
            let len = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
            let body = rest.get(8..).unwrap_or_default();
            // A truncated last chunk is read as far as it goes.
            let body = &body[..len.min(body.len())];
            match id {
                b"fmt " if body.len() >= 16 => {
                    let u16_at = |i: usize| u16::from_le_bytes([body[i], body[i + 1]]);
                    let mut tag = u16_at(0);
                    if tag == 0xFFFE && body.len() >= 26 {
                        tag = u16_at(24); // the sub-format GUID starts with the tag
                    }
                    let rate = u32::from_le_bytes([body[4], body[5], body[6], body[7]]);
                    fmt = Some((tag, u16_at(2), rate, u16_at(14)));
                }
                b"data" => data = Some(body),
                _ => {}
            }
            let skip = 8usize.saturating_add(len).saturating_add(len % 2);
            rest = rest.get(skip..).unwrap_or_default();
        }
        let (tag, channels, rate, bits) = fmt.ok_or(WavError::Missing("fmt "))?;
        let data = data.ok_or(WavError::Missing("data"))?;
        if channels != 1 || rate != 8000 {
            return Err(WavError::Unsupported(format!(
                "{channels} channel(s) at {rate} Hz"
            )));
        }
        let samples: Vec<i16> = match (tag, bits) {
            (1, 16) => data
                .chunks_exact(2)
                .map(|c| i16::from_le_bytes([c[0], c[1]]))
                .collect(),
            (6, 8) => data.iter().map(|b| alaw_to_linear(*b)).collect(),
            (7, 8) => data.iter().map(|b| ulaw_to_linear(*b)).collect(),
            _ => {
                return Err(WavError::Unsupported(format!(
                    "format tag {tag} with {bits} bits per sample"
                )))
            }
        };
        if samples.is_empty() {
            return Err(WavError::Empty);
        }
        if samples.len() > MAX_SAMPLES {
            return Err(WavError::TooLong);
        }
        Ok(Prompt::from_linear(&samples))
    }

    /// The frames for RTP payload type `pt` (8 = PCMA, anything else PCMU).
    pub fn payload(&self, pt: u8) -> &[u8] {
        if pt == 8 {
            &self.alaw
        } else {
            &self.ulaw
        }
    }

    pub fn frames(&self) -> usize {
        self.ulaw.len() / FRAME
    }

    pub fn duration(&self) -> std::time::Duration {
        std::time::Duration::from_millis(self.frames() as u64 * 20)
    }

    /// The built-in hold music: a slow, soft arpeggio over four chords (8 s, loops).
    pub fn hold_music() -> Prompt {
        // C, A minor, F, G: each chord's notes rise in quarter-second steps.
        let chords: [[f32; 4]; 4] = [
            [261.63, 329.63, 392.00, 523.25],
            [220.00, 261.63, 329.63, 440.00],
            [174.61, 220.00, 261.63, 349.23],
            [196.00, 246.94, 293.66, 392.00],
        ];
        let notes: Vec<(f32, f32, f32)> = chords
            .iter()
            .flat_map(|c| c.iter().chain(c.iter()).map(|f| (*f, 0.25, 0.22)))
            .collect();
        Prompt::from_linear(&synth(&notes))
    }

    /// The built-in overflow announcement: the three rising special-information
    /// tones ("the call cannot be completed"), twice.
    pub fn sorry() -> Prompt {
        let sit = [
            (913.8, 0.33, 0.3),
            (1370.6, 0.33, 0.3),
            (1776.7, 0.33, 0.3),
            (0.0, 1.0, 0.0),
        ];
        let notes: Vec<_> = sit.iter().chain(sit.iter()).copied().collect();
        Prompt::from_linear(&synth(&notes))
    }

    /// The built-in confirmation: two short beeps.
    pub fn confirm() -> Prompt {
        Prompt::from_linear(&synth(&[
            (0.0, 0.2, 0.0),
            (1000.0, 0.15, 0.3),
            (0.0, 0.1, 0.0),
            (1000.0, 0.15, 0.3),
            (0.0, 0.2, 0.0),
        ]))
    }

    /// The voicemail menu asks for the PIN: two rising notes.
    pub fn enter_pin() -> Prompt {
        Prompt::from_linear(&synth(&[
            (0.0, 0.2, 0.0),
            (660.0, 0.2, 0.3),
            (880.0, 0.3, 0.3),
            (0.0, 0.2, 0.0),
        ]))
    }

    /// The beep after which one speaks (after a user's own greeting).
    pub fn beep() -> Prompt {
        Prompt::from_linear(&synth(&[(1000.0, 0.5, 0.3), (0.0, 0.1, 0.0)]))
    }

    /// A wrong entry (PIN): a low buzz.
    pub fn wrong() -> Prompt {
        Prompt::from_linear(&synth(&[
            (0.0, 0.1, 0.0),
            (220.0, 0.6, 0.3),
            (0.0, 0.2, 0.0),
        ]))
    }

    /// The end of a list (no more messages): two falling notes.
    pub fn no_more() -> Prompt {
        Prompt::from_linear(&synth(&[
            (0.0, 0.2, 0.0),
            (880.0, 0.2, 0.3),
            (660.0, 0.3, 0.3),
            (0.0, 0.2, 0.0),
        ]))
    }

    /// The built-in waiting tone (loops): a soft beep every three seconds,
    /// what a campaign's agent hears while their desktop shows the record.
    pub fn waiting() -> Prompt {
        Prompt::from_linear(&synth(&[(440.0, 0.2, 0.2), (0.0, 2.8, 0.0)]))
    }

    /// The built-in call-back offer: a rising three-note chime ("leave a
    /// message, or press 1 to be called back"; a queue's `callback_prompt`
    /// WAV says it in words), then the long beep after which the caller speaks.
    pub fn leave_message() -> Prompt {
        Prompt::from_linear(&synth(&[
            (523.25, 0.25, 0.25),
            (659.25, 0.25, 0.25),
            (783.99, 0.4, 0.25),
            (0.0, 0.6, 0.0),
            (1000.0, 0.6, 0.3),
            (0.0, 0.1, 0.0),
        ]))
    }

    /// The ringback tone of `zone` (ITU-T E.180 Supplement 2), one cadence
    /// long so it loops: what a caller hears while the other phone rings.
    pub fn ringback(zone: ToneZone) -> Prompt {
        let on = |freqs: &'static [f32], secs: f32| (freqs, secs);
        let cadence: &[(&[f32], f32)] = match zone {
            ToneZone::Us => &[on(&[440.0, 480.0], 2.0), on(&[], 4.0)],
            ToneZone::Eu => &[on(&[425.0], 1.0), on(&[], 4.0)],
            ToneZone::Uk => &[
                on(&[400.0, 450.0], 0.4),
                on(&[], 0.2),
                on(&[400.0, 450.0], 0.4),
                on(&[], 2.0),
            ],
            // 400 Hz amplitude-modulated at 16 Hz: the sum of 384 and 416 Hz.
            ToneZone::Jp => &[on(&[384.0, 416.0], 1.0), on(&[], 2.0)],
        };
        let mut out = Vec::new();
        for &(freqs, secs) in cadence {
            let n = (secs * 8000.0) as usize;
            let amp = 0.25 / freqs.len().max(1) as f32;
            out.extend((0..n).map(|i| {
                let t = i as f32 / 8000.0;
                let v: f32 = freqs.iter().map(|f| (TAU * f * t).sin()).sum();
                (v * amp * 32767.0) as i16
            }));
        }
        Prompt::from_linear(&out)
    }

    /// The sound as a WAV file (16-bit PCM), for admins who want to see or replace it.
    pub fn to_wav(&self) -> Vec<u8> {
        let samples: Vec<i16> = self.ulaw.iter().map(|u| ulaw_to_linear(*u)).collect();
        wav_pcm16(&samples)
    }
}

/// A WAV file (8 kHz mono 16-bit PCM) of `samples`.
pub fn wav_pcm16(samples: &[i16]) -> Vec<u8> {
    let len = u32::try_from(samples.len() * 2).unwrap_or(u32::MAX - 36);
    let mut out = Vec::with_capacity(44 + samples.len() * 2);
    out.extend_from_slice(b"RIFF");
    out.extend_from_slice(&(36 + len).to_le_bytes());
    out.extend_from_slice(b"WAVEfmt ");
    out.extend_from_slice(&16u32.to_le_bytes());
    for v in [1u16, 1] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(&8000u32.to_le_bytes());
    out.extend_from_slice(&16000u32.to_le_bytes());
    for v in [2u16, 16] {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.extend_from_slice(b"data");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend(samples.iter().flat_map(|s| s.to_le_bytes()));
    out
}

/// Tones (frequency Hz, seconds, amplitude 0..1; 0 Hz is silence), each with a
/// short fade in and out so notes do not click, plus a soft octave overtone.
fn synth(notes: &[(f32, f32, f32)]) -> Vec<i16> {
    let mut out = Vec::new();
    for &(freq, secs, amp) in notes {
        let n = (secs * 8000.0) as usize;
        let fade = (n / 8).max(1) as f32;
        for i in 0..n {
            let t = i as f32 / 8000.0;
            let env = (i as f32 / fade).min((n - i) as f32 / fade).min(1.0);
            let v = if freq == 0.0 {
                0.0
            } else {
                (TAU * freq * t).sin() * 0.8 + (TAU * 2.0 * freq * t).sin() * 0.2
            };
            out.push((v * env * amp * 32767.0) as i16);
        }
    }
    out
}

/// How much of the power of `samples` (8 kHz linear) lies at `freq`, from 0
/// to 1 (the Goertzel filter): tone checks and, later, in-band tone detection.
pub fn share_of(samples: &[i16], freq: f32) -> f32 {
    let k = 2.0 * (TAU * freq / 8000.0).cos();
    let (mut s1, mut s2, mut total) = (0.0f32, 0.0f32, 0.0f32);
    for &x in samples {
        let x = f32::from(x) / 32768.0;
        let s0 = x + k * s1 - s2;
        s2 = s1;
        s1 = s0;
        total += x * x;
    }
    let power = s1 * s1 + s2 * s2 - k * s1 * s2;
    power / (total * samples.len() as f32 / 2.0).max(f32::MIN_POSITIVE)
}

/// ITU-T G.711 mu-law (the classic Sun reference algorithm).
pub fn linear_to_ulaw(sample: i16) -> u8 {
    const BIAS: i32 = 0x84;
    const CLIP: i32 = 8159;
    const SEG_END: [i32; 8] = [0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF];
    let mut pcm = i32::from(sample) >> 2;
    let mask: u8 = if pcm < 0 {
        pcm = -pcm;
        0x7F
    } else {
        0xFF
    };
    pcm = pcm.min(CLIP) + (BIAS >> 2);
    match SEG_END.iter().position(|end| pcm <= *end) {
        Some(seg) => (((seg as i32) << 4) | ((pcm >> (seg + 1)) & 0xF)) as u8 ^ mask,
        None => 0x7F ^ mask,
    }
}

pub fn ulaw_to_linear(u: u8) -> i16 {
    let u = !u;
    let t = ((i32::from(u & 0x0F) << 3) + 0x84) << ((u & 0x70) >> 4);
    (if u & 0x80 != 0 { 0x84 - t } else { t - 0x84 }) as i16
}

/// ITU-T G.711 A-law (the classic Sun reference algorithm).
pub fn linear_to_alaw(sample: i16) -> u8 {
    const SEG_END: [i32; 8] = [0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF];
    let mut pcm = i32::from(sample) >> 3;
    let mask: u8 = if pcm >= 0 {
        0xD5
    } else {
        pcm = -pcm - 1;
        0x55
    };
    match SEG_END.iter().position(|end| pcm <= *end) {
        Some(seg) => {
            let quant = if seg < 2 { pcm >> 1 } else { pcm >> seg } & 0xF;
            (((seg as i32) << 4) | quant) as u8 ^ mask
        }
        None => 0x7F ^ mask,
    }
}

pub fn alaw_to_linear(a: u8) -> i16 {
    let a = a ^ 0x55;
    let mut t = i32::from(a & 0x0F) << 4;
    match (a & 0x70) >> 4 {
        0 => t += 8,
        1 => t += 0x108,
        seg => t = (t + 0x108) << (seg - 1),
    }
    (if a & 0x80 != 0 { t } else { -t }) as i16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ringback_tones_follow_their_zones_frequencies_and_cadence() {
        let us = Prompt::ringback(ToneZone::Us);
        assert_eq!(us.duration(), std::time::Duration::from_secs(6));
        let linear: Vec<i16> = us.payload(0).iter().map(|u| ulaw_to_linear(*u)).collect();
        let (tone, quiet) = linear.split_at(16000);
        assert!(share_of(tone, 440.0) > 0.3 && share_of(tone, 480.0) > 0.3);
        assert!(share_of(tone, 425.0) < 0.1, "not the European tone");
        assert!(quiet.iter().all(|s| s.abs() < 16), "4 s of silence");
        let eu: Vec<i16> = Prompt::ringback(ToneZone::Eu)
            .payload(8)
            .iter()
            .map(|a| alaw_to_linear(*a))
            .collect();
        assert_eq!(eu.len(), 5 * 8000);
        assert!(share_of(&eu[..8000], 425.0) > 0.8);
        assert_eq!(Prompt::ringback(ToneZone::Jp).frames(), 150);
        assert_eq!(Prompt::ringback(ToneZone::Uk).frames(), 150);
    }

    #[test]
    fn g711_round_trips_within_its_quantisation_step() {
        assert_eq!((linear_to_ulaw(0), linear_to_alaw(0)), (0xFF, 0xD5));
        for s in (-32768i32..32768).step_by(97) {
            let s = s as i16;
            let tolerance = (i32::from(s).abs() / 16).max(16);
            let u = i32::from(ulaw_to_linear(linear_to_ulaw(s)));
            let a = i32::from(alaw_to_linear(linear_to_alaw(s)));
            assert!((u - i32::from(s)).abs() <= tolerance, "mu-law {s} -> {u}");
            assert!((a - i32::from(s)).abs() <= tolerance, "A-law {s} -> {a}");
        }
    }

    #[test]
    fn a_wav_written_by_us_reads_back_as_the_same_prompt() {
        let music = Prompt::hold_music();
        assert_eq!(music.duration(), std::time::Duration::from_secs(8));
        let back = Prompt::from_wav(&music.to_wav()).expect("our own WAV");
        assert_eq!(back.payload(0), music.payload(0));
        assert_eq!(back.frames(), music.frames());
    }

    #[test]
    fn g711_wav_files_are_read_in_their_own_law() {
        let mut wav = Prompt::confirm().to_wav();
        // Rewrite as an A-law file: format 6, 8 bits, one byte per sample.
        let pcm: Vec<u8> = wav[44..]
            .chunks_exact(2)
            .map(|c| linear_to_alaw(i16::from_le_bytes([c[0], c[1]])))
            .collect();
        wav.truncate(44);
        wav[20..22].copy_from_slice(&6u16.to_le_bytes());
        wav[34..36].copy_from_slice(&8u16.to_le_bytes());
        wav[40..44].copy_from_slice(&(pcm.len() as u32).to_le_bytes());
        wav.extend_from_slice(&pcm);
        let p = Prompt::from_wav(&wav).expect("A-law WAV");
        assert_eq!(p.payload(8), pcm.as_slice());
    }

    #[test]
    fn unusable_wav_files_say_why() {
        assert_eq!(Prompt::from_wav(b"hello"), Err(WavError::NotWave));
        let mut wav = Prompt::confirm().to_wav();
        wav[24..28].copy_from_slice(&44100u32.to_le_bytes());
        assert!(matches!(
            Prompt::from_wav(&wav),
            Err(WavError::Unsupported(_))
        ));
        assert_eq!(
            Prompt::from_wav(b"RIFF\0\0\0\0WAVE"),
            Err(WavError::Missing("fmt "))
        );
    }
}
