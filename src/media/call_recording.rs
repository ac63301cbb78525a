//! Call recordings: what both sides of a relayed call say, mixed into one
//! 8 kHz mono WAV and streamed to disk while the call goes on (an hour's
//! call holds a second of audio in memory, not an hour's).
//!
//! [`Mix`] places each side's decoded audio on the recording's timeline by
//! when it arrived (a gap longer than the jitter allowance becomes
//! silence) and hands out the mixed samples a little behind real time.
//! [`Disk`] is one thread per media engine that writes every recording's
//! samples in order, finishes a file durably (header patched, synced,
//! renamed into place, its directory synced) and reports it once: saved at
//! the end, or failed at the first write error — a full disk — after which
//! the half-written file is removed and the call goes on unrecorded.

use super::prompt::{alaw_to_linear, ulaw_to_linear, wav_pcm16};
use super::recorder;
use super::MediaEvent;
use std::collections::{HashMap, HashSet};
use std::io::{Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;

/// Samples per millisecond (8 kHz).
const PER_MS: u64 = 8;

/// A packet arriving this much later than its side's audio so far ends is
/// a gap (silence in between), not jitter.
const JITTER: u64 = 60 * PER_MS;

/// Audio arriving this far ahead of real time (a burst after a stall) is
/// dropped rather than let one side drift ahead of the other.
const AHEAD: u64 = 1000 * PER_MS;

/// How far behind real time mixed samples are handed out, so a late packet
/// still lands beside what the other side said at the time.
pub const LAG: u64 = 200 * PER_MS;

/// Mixed samples are handed to the disk in chunks of about this many.
pub const CHUNK: u64 = 1000 * PER_MS;

/// Both sides' audio not yet mixed, on one timeline measured in samples
/// since the recording started.
#[derive(Debug, Default)]
pub struct Mix {
    /// Each side's samples from `base` on.
    tracks: [Vec<i16>; 2],
    /// The timeline position of the tracks' first samples.
    base: u64,
}

impl Mix {
    /// Adds one RTP payload of type `pt` (0 PCMU, 8 PCMA; anything else is
    /// not audio) from `side`, received `at` samples into the recording.
    pub fn push(&mut self, side: usize, pt: u8, payload: &[u8], at: u64) {
        let decode: fn(u8) -> i16 = match pt {
            0 => ulaw_to_linear,
            8 => alaw_to_linear,
            _ => return,
        };
        let track = &mut self.tracks[side.min(1)];
        let end = self.base + track.len() as u64;
        let starts = at.saturating_sub(payload.len() as u64);
        if end > at + AHEAD {
            return;
        }
        if starts > end + JITTER {
            track.resize((starts - self.base) as usize, 0);
        }
        track.extend(payload.iter().map(|b| decode(*b)));
    }

    /// Samples that can be mixed now, `at` samples into the recording.
    pub fn ready(&self, at: u64) -> u64 {
        at.saturating_sub(LAG).saturating_sub(self.base)
    }

    /// The next `n` mixed samples (a side that said nothing is silence).
    pub fn take(&mut self, n: u64) -> Vec<i16> {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        for t in &mut self.tracks {
            if t.len() < n {
                t.resize(n, 0);
            }
        }
        let [a, b] = &mut self.tracks;
        let mixed = a
            .drain(..n)
            .zip(b.drain(..n))
            .map(|(x, y)| x.saturating_add(y))
            .collect();
        self.base += n as u64;
        mixed
    }

    /// Everything left, mixed (the recording ends).
    pub fn rest(&mut self) -> Vec<i16> {
        let n = self.tracks.iter().map(Vec::len).max().unwrap_or(0);
        self.take(n as u64)
    }
}

/// Reports the end of a recording to its call.
pub type Report = Arc<dyn Fn(MediaEvent) + Send + Sync>;

/// What the disk thread is asked to do.
pub enum Job {
    /// Open recording `id`'s file; `report` is told how it ends.
    Start { id: u64, report: Report },
    /// Append mixed samples.
    Samples { id: u64, samples: Vec<i16> },
    /// Finish and report it.
    End { id: u64 },
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Job::Start { id, .. } => write!(f, "Start({id})"),
            Job::Samples { id, samples } => write!(f, "Samples({id}, {})", samples.len()),
            Job::End { id } => write!(f, "End({id})"),
        }
    }
}

/// The handle to the disk thread of one media engine; cheap to clone.
#[derive(Debug, Clone)]
pub struct Disk {
    jobs: mpsc::Sender<Job>,
}

/// A recording being written.
struct Open {
    file: std::fs::File,
    samples: u64,
    report: Report,
}

impl Disk {
    /// Starts the thread that writes recordings into `dir` (it ends when
    /// the last handle is gone).
    pub fn start(dir: PathBuf) -> std::io::Result<Disk> {
        let (jobs, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("sipdesk-recordings".into())
            .spawn(move || write_all(&dir, &rx))?;
        Ok(Disk { jobs })
    }

    pub fn send(&self, job: Job) {
        // The thread ends only once every handle is gone.
        let _ = self.jobs.send(job);
    }
}

/// The disk thread: every job in order, until every handle is gone.
fn write_all(dir: &Path, jobs: &mpsc::Receiver<Job>) {
    let mut open: HashMap<u64, Open> = HashMap::new();
    let mut failed: HashSet<u64> = HashSet::new();
    while let Ok(job) = jobs.recv() {
        match job {
            Job::Start { id, report } => match create(dir, id) {
                Ok(file) => {
                    open.insert(
                        id,
                        Open {
                            file,
                            samples: 0,
                            report,
                        },
                    );
                }
                Err(e) => {
                    fail(dir, id, 0, &report, &e);
                    failed.insert(id);
                }
            },
            Job::Samples { id, samples } => {
                let Some(o) = open.get_mut(&id) else { continue };
                let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
                match o.file.write_all(&bytes) {
                    Ok(()) => o.samples += samples.len() as u64,
                    Err(e) => {
                        if let Some(o) = open.remove(&id) {
                            fail(dir, id, o.samples, &o.report, &e);
                        }
                        failed.insert(id);
                    }
                }
            }
            Job::End { id } => {
                if failed.remove(&id) {
                    continue; // reported when it failed
                }
                let Some(o) = open.remove(&id) else { continue };
                let ms = o.samples / PER_MS;
                match finish(dir, id, o.file, o.samples) {
                    Ok(()) => (o.report)(MediaEvent::Recorded {
                        id,
                        saved: true,
                        ms,
                    }),
                    Err(e) => fail(dir, id, o.samples, &o.report, &e),
                }
            }
        }
    }
}

fn part(dir: &Path, id: u64) -> PathBuf {
    recorder::path(dir, id).with_extension("wav.part")
}

/// A new file for recording `id`, its header written (sizes patched at the end).
fn create(dir: &Path, id: u64) -> std::io::Result<std::fs::File> {
    std::fs::create_dir_all(dir)?;
    let mut f = std::fs::File::create(part(dir, id))?;
    f.write_all(&wav_pcm16(&[]))?;
    Ok(f)
}

/// Writes the sizes in the header, syncs, and renames the file into place.
fn finish(dir: &Path, id: u64, mut f: std::fs::File, samples: u64) -> std::io::Result<()> {
    let data = u32::try_from(samples * 2).unwrap_or(u32::MAX - 36);
    f.seek(SeekFrom::Start(4))?;
    f.write_all(&(36 + data).to_le_bytes())?;
    f.seek(SeekFrom::Start(40))?;
    f.write_all(&data.to_le_bytes())?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(part(dir, id), recorder::path(dir, id))?;
    std::fs::File::open(dir)?.sync_all()
}

/// A recording that cannot be written: logged once, its partial file
/// removed, reported as not saved.
fn fail(dir: &Path, id: u64, samples: u64, report: &Report, e: &std::io::Error) {
    tracing::error!("call recording {id} stopped: {e}");
    let _ = std::fs::remove_file(part(dir, id));
    report(MediaEvent::Recorded {
        id,
        saved: false,
        ms: samples / PER_MS,
    });
}

#[cfg(test)]
mod tests {
    use super::super::prompt::{linear_to_ulaw, Prompt};
    use super::*;
    use std::sync::Mutex;

    fn loud(n: usize) -> Vec<u8> {
        vec![linear_to_ulaw(4000); n]
    }

    #[test]
    fn both_sides_land_on_one_timeline_and_a_gap_is_silence() {
        let mut mix = Mix::default();
        // Side A speaks for 40 ms from the start; side B for 20 ms, 100 ms
        // in (a packet's audio ends when it arrives).
        mix.push(0, 0, &loud(160), 160);
        mix.push(0, 0, &loud(160), 320);
        mix.push(1, 0, &loud(160), 960);
        mix.push(1, 101, &[1, 2, 3, 4], 980); // an event, not audio
        assert_eq!(mix.ready(960), 0, "held back for late packets");
        let n = mix.ready(1120 + LAG);
        assert_eq!(n, 1120);
        let first = mix.take(n);
        assert!(first[..320].iter().all(|s| *s > 3000), "A's speech");
        assert!(first[320..800].iter().all(|s| *s == 0), "then nobody");
        assert!(first[800..960].iter().all(|s| *s > 3000), "B's speech");
        assert!(first[960..].iter().all(|s| *s == 0), "nobody yet");
        // A late packet of A's lands at the end of what A said.
        mix.push(0, 0, &loud(160), 1200);
        let rest = mix.rest();
        assert_eq!(rest.len(), 160);
    }

    #[test]
    fn both_sides_at_once_are_added_without_wrapping_around() {
        let mut mix = Mix::default();
        mix.push(0, 0, &[linear_to_ulaw(30000); 160], 160);
        mix.push(
            1,
            8,
            &[super::super::prompt::linear_to_alaw(30000); 160],
            160,
        );
        let out = mix.rest();
        assert_eq!(out.len(), 160);
        assert!(out.iter().all(|s| *s == i16::MAX), "clipped, not wrapped");
    }

    fn reports() -> (Report, Arc<Mutex<Vec<MediaEvent>>>) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = Arc::clone(&seen);
        let report: Report = Arc::new(move |e| s.lock().expect("lock").push(e));
        (report, seen)
    }

    fn settle(seen: &Mutex<Vec<MediaEvent>>, n: usize) -> Vec<MediaEvent> {
        for _ in 0..200 {
            let got = seen.lock().expect("lock").clone();
            if got.len() >= n {
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        seen.lock().expect("lock").clone()
    }

    #[test]
    fn a_streamed_recording_is_a_whole_wav_once_reported() {
        let dir = tempfile::tempdir().expect("dir");
        let disk = Disk::start(dir.path().to_path_buf()).expect("thread");
        let (report, seen) = reports();
        disk.send(Job::Start { id: 5, report });
        for _ in 0..3 {
            disk.send(Job::Samples {
                id: 5,
                samples: vec![1000; 8000],
            });
        }
        disk.send(Job::End { id: 5 });
        let got = settle(&seen, 1);
        let want = MediaEvent::Recorded {
            id: 5,
            saved: true,
            ms: 3000,
        };
        assert_eq!(got, vec![want]);
        let wav = std::fs::read(recorder::path(dir.path(), 5)).expect("file");
        let p = Prompt::from_wav(&wav).expect("a valid WAV");
        assert_eq!(p.duration(), std::time::Duration::from_secs(3));
        assert!(!part(dir.path(), 5).exists());
    }

    #[test]
    fn a_full_disk_stops_the_recording_reports_it_once_and_leaves_no_file() {
        let dir = tempfile::tempdir().expect("dir");
        // Writes to /dev/full fail as a full disk does (ENOSPC).
        std::os::unix::fs::symlink("/dev/full", part(dir.path(), 9)).expect("link");
        let disk = Disk::start(dir.path().to_path_buf()).expect("thread");
        let (report, seen) = reports();
        disk.send(Job::Start { id: 9, report });
        disk.send(Job::Samples {
            id: 9,
            samples: vec![1000; 8000],
        });
        disk.send(Job::Samples {
            id: 9,
            samples: vec![1000; 8000],
        });
        disk.send(Job::End { id: 9 });
        // Another recording on the same disk thread is unaffected.
        let (other, seen_other) = reports();
        disk.send(Job::Start {
            id: 10,
            report: other,
        });
        disk.send(Job::End { id: 10 });
        settle(&seen_other, 1);
        let got = settle(&seen, 1);
        assert_eq!(
            got,
            vec![MediaEvent::Recorded {
                id: 9,
                saved: false,
                ms: 0
            }],
            "reported once, as not saved"
        );
        assert!(!recorder::path(dir.path(), 9).exists());
        assert!(part(dir.path(), 9).symlink_metadata().is_err(), "removed");
        assert!(recorder::path(dir.path(), 10).exists());
    }
}
