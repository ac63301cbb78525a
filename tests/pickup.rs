//! Call pickup with real phones: SIPp phones, a SIPp caller, an embedded PBX.
//! A BLF key watches 4002, sees the ringing call's identifiers in the
//! dialog-info NOTIFY, and its phone picks the call up with an INVITE with
//! Replaces (the caller's call and the picker's on different shards); the
//! group code `*8` picks a call up too; the caller's RTP reaches the picker,
//! 4002's phone is cancelled, nothing is left over. A phone outside 4002's
//! group is refused (403) and a Replaces naming no call gets 481.

mod common;

use common::*;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

/// A SIPp run.
type Sipp = tokio::task::JoinHandle<std::process::Output>;

fn pw(ext: &str) -> String {
    format!("pw{ext}")
}

/// 4002 and 4003 share group "front", also ring group 600 (all at once; 4003
/// has no phone); 4004 is in "back". Callers need no digest; pickups always do.
const GROUPS: &str = "[calls]\nauthenticate = false\nring_timeout_secs = 20\n\
    [[groups]]\nname = \"front\"\nnumber = \"600\"\nring_secs = 20\nmembers = [{ extension = \"4002\", priority = 1 }, { extension = \"4003\", priority = 1 }]\n\
    [[groups]]\nname = \"back\"\nmembers = [{ extension = \"4004\", priority = 1 }]\n";

struct Lab {
    pbx: sipdesk::Pbx,
    target: SocketAddr,
    dir: tempfile::TempDir,
    /// 4002's phone.
    phone: u16,
}

impl Lab {
    async fn start() -> Lab {
        let dir = tempfile::tempdir().expect("tmp");
        let users: Vec<(String, String)> = ["4002", "4003", "4004"]
            .iter()
            .map(|u| (u.to_string(), pw(u)))
            .collect();
        let (pbx, target) = embedded_pbx(dir.path(), &users, GROUPS).await;
        let phone = free_port();
        register_phone(target, dir.path(), phone, "4002", &pw("4002")).await;
        Lab {
            pbx,
            target,
            dir,
            phone,
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// `ext`'s credentials as a SIPp injection file.
    fn credentials(&self, ext: &str) -> String {
        let name = format!("{ext}-{}.csv", free_port());
        let rows = [format!("{ext};{}", pw(ext))];
        injection_file(self.path(), &name, &rows)
            .display()
            .to_string()
    }

    /// 4002's phone: it rings until cancelled.
    fn ringing_phone(&self) -> Sipp {
        let args = ["-m", "1"];
        sipp_scenario(self.target, self.path(), self.phone, "uas_ring.xml", &args)
    }

    /// A caller (Call-ID `cid`) who calls 4002, talks 2.5 s once answered
    /// (G.711 from a pcap) and hangs up.
    fn caller(&self, cid: &str) -> Sipp {
        self.caller_to(cid, "4002")
    }

    /// [`Lab::caller`] calling `number`.
    fn caller_to(&self, cid: &str, number: &str) -> Sipp {
        let args = ["-s", number, "-m", "1", "-d", "2500", "-cid_str", cid];
        sipp_scenario(
            self.target,
            self.path(),
            free_port(),
            "uac_call_rtp.xml",
            &args,
        )
    }

    /// Waits (up to 5 s) until a call rings at 4002.
    async fn ringing(&self) {
        for _ in 0..100 {
            if !self.pbx.presence().dialogs("4002").is_empty() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no call rings at 4002");
    }

    /// 4003's BLF key watching 4002 (logs the ringing call's identifiers).
    fn blf_key(&self) -> Sipp {
        let blf = self.credentials("4003");
        let args = ["-inf", &blf, "-s", "4002", "-m", "1", "-trace_logs"];
        let port = free_port();
        sipp_scenario(
            self.target,
            self.path(),
            port,
            "subscribe_ringing.xml",
            &args,
        )
    }

    /// The identifiers of the ringing call the BLF key logged (call-id,
    /// local-tag, remote-tag), waited for up to 5 s.
    async fn blf_saw(&self) -> Vec<String> {
        for _ in 0..100 {
            let logs = std::fs::read_dir(self.path()).expect("dir").flatten();
            for e in logs.filter(|e| e.file_name().to_string_lossy().ends_with("_logs.log")) {
                let text = std::fs::read_to_string(e.path()).unwrap_or_default();
                let seen = text.lines().find_map(|l| {
                    let ids: Vec<String> = l
                        .strip_prefix("ringing: ")?
                        .split_whitespace()
                        .map(String::from)
                        .collect();
                    (ids.len() == 3).then_some(ids)
                });
                if let Some(ids) = seen {
                    return ids;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the BLF key saw no ringing call");
    }

    /// `ext`'s phone dials `number`, with `pickup` as its extra header lines
    /// (none: a code), Call-ID `cid`, its media at `rtp_port`.
    fn pick_up(&self, ext: &str, number: &str, pickup: &str, cid: &str, rtp_port: &str) -> Sipp {
        let text = std::fs::read_to_string(scenario("uac_pickup.xml")).expect("scenario");
        let path = self.path().join(format!("pickup-{}.xml", free_port()));
        std::fs::write(&path, text.replace("[pickup]\n", pickup)).expect("write");
        let args: Vec<String> = [
            "-sf",
            &path.display().to_string(),
            "-inf",
            &self.credentials(ext),
            "-s",
            number,
            "-m",
            "1",
            "-cid_str",
            cid,
            "-key",
            "rtp_port",
            rtp_port,
        ]
        .iter()
        .map(|a| a.to_string())
        .collect();
        sipp_embedded(self.target, self.path(), free_port(), args)
    }

    /// The pickup went through: the picker talked and was hung up by the
    /// caller, whose RTP reached it; 4002's phone was cancelled; nothing is
    /// left over.
    async fn picked_up(
        self,
        picker: Sipp,
        caller: Sipp,
        ringing_phone: Sipp,
        packets: std::thread::JoinHandle<usize>,
    ) {
        ok(&picker.await.expect("join"), "4003 picks the call up");
        ok(
            &caller.await.expect("join"),
            "the caller is answered and talks",
        );
        ok(
            &ringing_phone.await.expect("join"),
            "4002's phone is cancelled",
        );
        let packets = packets.join().expect("counter");
        assert!(
            packets >= 50,
            "the caller's RTP reaches the picker (got {packets} packets)"
        );
        assert!(settled(&self.pbx).await, "calls or media ports left over");
        self.pbx.shutdown().await.expect("shutdown");
    }

    /// A refused pickup: `ext` dials `number` (extra header lines `extra`)
    /// and gets `code`.
    async fn refused(&self, ext: &str, number: &str, extra: &str, code: u16) {
        let text =
            std::fs::read_to_string(scenario("uac_auth_expect_final.xml")).expect("scenario");
        let mut text = text.replace("[final]", &code.to_string());
        for cseq in ["      CSeq: 1 INVITE\n", "      CSeq: 2 INVITE\n"] {
            text = text.replace(cseq, &format!("{cseq}{extra}"));
        }
        let path = self.path().join(format!("refused-{}.xml", free_port()));
        std::fs::write(&path, text).expect("write");
        let args = [
            "-sf".to_string(),
            path.display().to_string(),
            "-inf".into(),
            self.credentials(ext),
            "-s".into(),
            number.into(),
            "-m".into(),
            "1".into(),
        ];
        let out = sipp_embedded(self.target, self.path(), free_port(), args.to_vec())
            .await
            .expect("join");
        ok(&out, &format!("{ext} dialling {number} gets {code}"));
    }
}

/// A Call-ID (SIPp `-cid_str`) whose call lives on the other shard than `of`.
fn on_the_other_shard(of: &str) -> String {
    let shard = |c: &str| sipdesk::sip::call_id::shard_of(c.replace("%u", "1").as_bytes(), 2);
    (0..)
        .map(|n| format!("picker%u-{n}@sipp"))
        .find(|c| shard(c) != shard(of))
        .expect("a Call-ID of the other shard")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blf_key_picks_up_a_call_ringing_at_a_colleagues_phone() {
    let lab = Lab::start().await;
    let ringing_phone = lab.ringing_phone();
    let key = lab.blf_key();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let caller_cid = "caller%u@sipp";
    let caller = lab.caller(caller_cid);

    // What the BLF key saw: the ringing call's identifiers.
    let ids = lab.blf_saw().await;
    let [call_id, local_tag, remote_tag] = [&ids[0], &ids[1], &ids[2]].map(String::as_str);
    assert_eq!(call_id, "caller1@sipp", "the caller's leg is named");

    // A phone outside 4002's group, and a Replaces naming no call.
    let named = format!("      Replaces: {call_id};to-tag={local_tag};from-tag={remote_tag};early-only\n      Require: replaces\n");
    lab.refused("4004", "4002", &named, 403).await;
    let other = named.replace(call_id, "nothing@sipp");
    lab.refused("4003", "4002", &other, 481).await;

    let (rtp_port, packets) = rtp_counter();
    let picker = lab.pick_up(
        "4003",
        "4002",
        &named,
        &on_the_other_shard(caller_cid),
        &rtp_port,
    );
    ok(
        &key.await.expect("join"),
        "the BLF key sees the call leave 4002",
    );
    lab.picked_up(picker, caller, ringing_phone, packets).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_group_code_picks_up_the_call_ringing_in_the_group() {
    let lab = Lab::start().await;
    let ringing_phone = lab.ringing_phone();
    let caller = lab.caller("code-caller%u@sipp");
    lab.ringing().await;
    lab.refused("4004", "*8", "", 404).await;
    lab.refused("4004", "**4002", "", 403).await;
    let (rtp_port, packets) = rtp_counter();
    let picker = lab.pick_up("4003", "*8", "", "code%u@sipp", &rtp_port);
    lab.picked_up(picker, caller, ringing_phone, packets).await;
}

/// A ring group ringing all its members shows the call on a member's BLF
/// key like a call to the member, and a colleague's key picks it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ring_groups_call_shows_on_a_members_blf_key_and_a_colleague_picks_it_up() {
    let lab = Lab::start().await;
    let ringing_phone = lab.ringing_phone();
    let key = lab.blf_key();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let caller_cid = "group%u@sipp";
    let caller = lab.caller_to(caller_cid, "600");
    let ids = lab.blf_saw().await;
    assert_eq!(ids[0], "group1@sipp", "the caller's leg is named");
    let named = format!(
        "      Replaces: {};to-tag={};from-tag={}\n      Require: replaces\n",
        ids[0], ids[1], ids[2]
    );
    let (rtp_port, packets) = rtp_counter();
    let cid = on_the_other_shard(caller_cid);
    let picker = lab.pick_up("4003", "4002", &named, &cid, &rtp_port);
    ok(
        &key.await.expect("join"),
        "the BLF key sees the call leave 4002",
    );
    lab.picked_up(picker, caller, ringing_phone, packets).await;
}
