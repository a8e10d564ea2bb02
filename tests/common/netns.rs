//! Hosts of their own for members: network namespaces joined by a bridge in
//! the test's namespace, so a test can cut a member off from the others
//! (iptables inside its namespace) while the test's clients still reach
//! every member. Needs root, iproute2 and iptables; `Network::create`
//! returns `None`, with a visible note, where they are missing.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

pub struct Network {
    tag: String,
    subnet: String,
    hosts: usize,
}

fn run(args: &[&str]) -> bool {
    Command::new(args[0]).args(&args[1..]).status().is_ok_and(|s| s.success())
}

fn must(args: &[&str]) {
    assert!(run(args), "{}", args.join(" "));
}

impl Network {
    /// `hosts` namespaces on a fresh bridge, with a subnet no other network
    /// of this machine's tests uses at the same time.
    pub fn create(hosts: usize) -> Option<Network> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let root = Command::new("id").arg("-u").output().is_ok_and(|o| o.stdout.starts_with(b"0\n"));
        let can = root && run(&["ip", "-V"]) && run(&["iptables", "--version"]);
        if !can {
            eprintln!("NOTE: network namespaces need root, iproute2 and iptables; skipping this partition test");
            return None;
        }
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        let network = Network {
            tag: format!("c{}x{n}", pid % 100_000),
            subnet: format!("10.{}.{}", 100 + pid % 150, n % 250),
            hosts,
        };
        let bridge = network.bridge();
        must(&["ip", "link", "add", &bridge, "type", "bridge"]);
        must(&["ip", "addr", "add", &format!("{}.1/24", network.subnet), "dev", &bridge]);
        must(&["ip", "link", "set", &bridge, "up"]);
        // Docker's FORWARD policy drops bridged traffic it does not know.
        must(&["iptables", "-I", "FORWARD", "-i", &bridge, "-j", "ACCEPT"]);
        for host in 0..hosts {
            let (ns, veth) = (network.namespace(host), format!("{}v{host}", network.tag));
            must(&["ip", "netns", "add", &ns]);
            must(&["ip", "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &ns]);
            must(&["ip", "link", "set", &veth, "master", &bridge, "up"]);
            must(&["ip", "-n", &ns, "addr", "add", &format!("{}/24", network.ip(host)), "dev", "eth0"]);
            must(&["ip", "-n", &ns, "link", "set", "eth0", "up"]);
            must(&["ip", "-n", &ns, "link", "set", "lo", "up"]);
        }
        Some(network)
    }

    fn bridge(&self) -> String {
        format!("{}br", self.tag)
    }

    pub fn namespace(&self, host: usize) -> String {
        format!("{}n{host}", self.tag)
    }

    pub fn ip(&self, host: usize) -> String {
        format!("{}.{}", self.subnet, 11 + host)
    }

    /// The command prefix that runs a program on `host`.
    pub fn launcher(&self, host: usize) -> Vec<String> {
        ["ip", "netns", "exec", &self.namespace(host)].iter().map(|s| s.to_string()).collect()
    }

    /// Drops every packet between `host` and the other hosts, both ways;
    /// the test's own namespace still reaches it.
    pub fn isolate(&self, host: usize) {
        let ns = self.namespace(host);
        for other in (0..self.hosts).filter(|&o| o != host) {
            let ip = self.ip(other);
            must(&["ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &ip, "-j", "DROP"]);
            must(&["ip", "netns", "exec", &ns, "iptables", "-A", "OUTPUT", "-d", &ip, "-j", "DROP"]);
        }
    }

    /// Drops what `host` receives from `from`; what it sends still arrives.
    pub fn drop_from(&self, host: usize, from: usize) {
        let ns = self.namespace(host);
        must(&["ip", "netns", "exec", &ns, "iptables", "-A", "INPUT", "-s", &self.ip(from), "-j", "DROP"]);
    }

    pub fn heal(&self, host: usize) {
        must(&["ip", "netns", "exec", &self.namespace(host), "iptables", "-F"]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for host in 0..self.hosts {
            run(&["ip", "netns", "del", &self.namespace(host)]);
        }
        let bridge = self.bridge();
        run(&["iptables", "-D", "FORWARD", "-i", &bridge, "-j", "ACCEPT"]);
        run(&["ip", "link", "del", &bridge]);
    }
}
