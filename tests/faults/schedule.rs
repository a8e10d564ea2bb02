//! The cluster under test and the faults done to it, one at a time: each
//! fault is injected, held, healed, and waited out until every member is
//! healthy again.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::common::netns::Network;
use crate::common::tmpfs::Tmpfs;
use crate::common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Fault {
    KillLeader,
    KillFollower,
    KillAll,
    /// SIGSTOP of the leader for longer than an election timeout.
    PauseLeader,
    IsolateLeader,
    IsolateFollower,
    /// The leader's packets to one follower are lost; the follower's to the
    /// leader still arrive.
    LoseLeaderToFollower,
    /// The wall clock of one member jumps an hour ahead, then an hour back.
    ClockJump,
    /// A follower is removed, wiped, and added back as a new member.
    ReplaceFollower,
    /// One member's disk fills up; it may exit (with the reason said), and
    /// starts again once there is room.
    FillDisk,
}

impl Fault {
    pub const ALL: [Fault; 10] = [
        Fault::KillLeader,
        Fault::KillFollower,
        Fault::KillAll,
        Fault::PauseLeader,
        Fault::IsolateLeader,
        Fault::IsolateFollower,
        Fault::LoseLeaderToFollower,
        Fault::ClockJump,
        Fault::ReplaceFollower,
        Fault::FillDisk,
    ];
}

/// How long a fault lasts: several election timeouts (1 s each).
const HELD: Duration = Duration::from_secs(3);
const LIBFAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";
/// The member whose clock the ClockJump fault moves.
const CLOCKED: usize = 2;
/// The member whose data dir is on a disk of its own, which FillDisk fills.
const DISKED: usize = 1;
/// That disk's size: room for a long run's data, only used pages cost memory.
const DISK_MEGABYTES: u32 = 4096;

pub struct Cluster {
    pub network: Network,
    pub members: Vec<Member>,
    /// libfaketime's offset for member CLOCKED, read again every second;
    /// `None` where libfaketime is not installed.
    clock: Option<PathBuf>,
    /// Member DISKED's disk; `None` where no tmpfs can be mounted.
    disk: Option<Tmpfs>,
}

impl Cluster {
    /// Three members, each on a host of its own; `None` where network
    /// namespaces cannot be made here.
    pub fn start(dir: &Path) -> Option<Cluster> {
        let network = Network::create(3)?;
        let initial: Vec<String> = (0..3).map(|h| format!("m{h}=http://{}:2380", network.ip(h))).collect();
        let clock = Path::new(LIBFAKETIME).exists().then(|| dir.join("clock-offset"));
        match &clock {
            Some(file) => std::fs::write(file, "+0\n").unwrap(),
            None => eprintln!("NOTE: libfaketime is not installed (apt-get install libfaketime); the clock-jump fault is skipped"),
        }
        let disk = Tmpfs::mount(&dir.join("disk"), DISK_MEGABYTES);
        let mut members: Vec<Member> = (0..3)
            .map(|h| {
                let m = Member::networked(dir, &format!("m{h}"), &network, h, &initial.join(","));
                let m = match &disk {
                    Some(disk) if h == DISKED => m.with_data_dir(disk.0.join(format!("m{h}.etcd"))),
                    _ => m,
                };
                match &clock {
                    Some(file) if h == CLOCKED => m
                        .with_env("LD_PRELOAD", LIBFAKETIME)
                        .with_env("FAKETIME_TIMESTAMP_FILE", file.to_str().unwrap())
                        .with_env("FAKETIME_CACHE_DURATION", "1")
                        .with_env("DONT_FAKE_MONOTONIC", "1"),
                    _ => m,
                }
            })
            .collect();
        members.iter_mut().for_each(Member::start);
        let cluster = Cluster { network, members, clock, disk };
        cluster.wait_healthy();
        Some(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    pub fn wait_healthy(&self) {
        for m in &self.members {
            m.wait_healthy(Duration::from_secs(30));
        }
    }

    fn leader(&self, rt: &tokio::runtime::Runtime) -> usize {
        rt.block_on(leader_index(&self.members))
    }

    /// Injects `fault`, holds it, heals it and waits until the cluster is
    /// healthy; returns what was done, or `None` when this machine cannot do
    /// that fault.
    pub fn inject(&mut self, fault: Fault, rt: &tokio::runtime::Runtime) -> Option<String> {
        let leader = self.leader(rt);
        let follower = (leader + 1) % 3;
        let done = match fault {
            Fault::KillLeader | Fault::KillFollower => {
                let victim = if fault == Fault::KillLeader { leader } else { follower };
                self.members[victim].kill9();
                std::thread::sleep(HELD);
                self.members[victim].start();
                let role = if victim == leader { "leader" } else { "follower" };
                format!("kill -9 of {role} m{victim} for {HELD:?}")
            }
            Fault::KillAll => {
                self.members.iter_mut().for_each(Member::kill9);
                std::thread::sleep(Duration::from_secs(1));
                self.members.iter_mut().for_each(Member::start);
                "kill -9 of every member".into()
            }
            Fault::PauseLeader => {
                let pid = self.members[leader].pid().to_string();
                signal("-STOP", &pid);
                std::thread::sleep(HELD);
                signal("-CONT", &pid);
                format!("SIGSTOP of leader m{leader} for {HELD:?}")
            }
            Fault::IsolateLeader | Fault::IsolateFollower => {
                let victim = if fault == Fault::IsolateLeader { leader } else { follower };
                self.network.isolate(victim);
                std::thread::sleep(HELD);
                self.network.heal(victim);
                format!("m{victim} cut off from the others for {HELD:?}")
            }
            Fault::LoseLeaderToFollower => {
                self.network.drop_from(follower, leader);
                std::thread::sleep(HELD);
                self.network.heal(follower);
                format!("packets from leader m{leader} to m{follower} lost for {HELD:?}")
            }
            Fault::ClockJump => {
                let file = self.clock.as_ref()?;
                std::fs::write(file, "+1h\n").unwrap();
                std::thread::sleep(HELD);
                std::fs::write(file, "-1h\n").unwrap();
                std::thread::sleep(HELD);
                std::fs::write(file, "+0\n").unwrap();
                format!("m{CLOCKED}'s wall clock an hour ahead, then an hour behind, {HELD:?} each")
            }
            Fault::ReplaceFollower => {
                let peer_url = self.members[follower].peer_url.clone();
                let (old, new) = rt.block_on(self.replace(follower, &peer_url));
                format!("m{follower} ({old:x}) removed, wiped and added back as {new:x}")
            }
            Fault::FillDisk => {
                let disk = self.disk.as_ref()?;
                let role = if DISKED == leader { "leader" } else { "follower" };
                let logged_before = self.members[DISKED].log_text().len();
                disk.fill();
                std::thread::sleep(HELD);
                disk.empty();
                let member = &mut self.members[DISKED];
                match member.try_wait() {
                    Some(status) => {
                        let said = member.log_text().split_off(logged_before);
                        assert!(
                            status.code() == Some(1) && said.contains("No space left on device"),
                            "m{DISKED} with a full disk ended with {status} without saying why:\n{said}"
                        );
                        member.start();
                        format!("{role} m{DISKED}'s disk full for {HELD:?}: it exited saying so, and started again")
                    }
                    None => format!("{role} m{DISKED}'s disk full for {HELD:?}: it kept running"),
                }
            }
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        for m in &self.members {
            m.wait_healthy(deadline.saturating_duration_since(Instant::now()));
        }
        Some(done)
    }

    /// MemberRemove of member `i`, its data wiped, MemberAdd of it again,
    /// and a start that joins the existing cluster.
    async fn replace(&mut self, i: usize, peer_url: &str) -> (u64, u64) {
        let others: Vec<String> =
            self.members.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, m)| m.endpoint()).collect();
        let mut c = client(&others).await;
        let name = self.members[i].name.clone();
        let id = c.member_list().await.unwrap().members().iter().find(|m| m.name() == name).unwrap().id();
        // The strict reconfiguration check refuses removes and adds
        // ("unhealthy cluster") while the leader has not yet heard from a
        // member the last fault touched; an operator would retry, and so
        // does this.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(e) = c.member_remove(id).await {
            assert!(Instant::now() < deadline, "member remove: {e}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let removed = Instant::now();
        while self.members[i].try_wait().is_none() && removed.elapsed() < Duration::from_secs(10) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.members[i].kill9();
        std::fs::remove_dir_all(&self.members[i].data_dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(20);
        let added = loop {
            match c.member_add([peer_url], None).await {
                Ok(added) => break added.member().map_or(0, |m| m.id()),
                Err(e) => assert!(Instant::now() < deadline, "member add: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        self.members[i].add_args(&["--initial-cluster-state", "existing"]);
        self.members[i].start();
        (id, added)
    }

    /// Every member's process, still running (none exited by itself).
    pub fn assert_running(&mut self) {
        for m in &mut self.members {
            if let Some(status) = m.try_wait() {
                panic!("{} exited by itself ({status}); log:\n{}", m.name, m.log_text());
            }
        }
    }
}

fn signal(which: &str, pid: &str) {
    assert!(Command::new("kill").args([which, pid]).status().unwrap().success(), "kill {which} {pid}");
}
