//! HAProxy through its runtime API (`--proxy haproxy`): traffic moves between server
//! slots of a backend without a reload, so no client keep-alive connection is closed.
//!
//! Convention (docs/proxies.md): the backend is named after the compose service, and
//! declares server slots (`server s1 localhost:8080` ... with `disabled` and `resolvers`);
//! a free slot is one in maintenance. A switch names the new containers in free slots (by
//! container name, which HAProxy resolves through Docker's DNS, so a slot follows its
//! container to a new address and never names another container), sets them `ready`,
//! waits until HAProxy's own check says they are UP, and only then sets the old slots to
//! `drain` (no new requests). After the old containers stopped, their slots go back to
//! `maint` (free). Backup servers of the backend (a `server-template ... backup` on the
//! compose service's name) are not slots: they serve only while no slot is UP, e.g. after
//! `down` and `up` made new containers that no slot names.
//!
//! berth reaches the admin socket with `docker exec -i PROXY socat stdio SOCKET` (the
//! socket stays inside the proxy container; no host mount needed). Commands are written
//! on stdin, never built into a shell string.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use berth_core::compose::Compose;
use berth_core::msg;
use berth_core::process::Cmd;

/// The admin socket of HAProxy in the proxy service's running container.
#[derive(Debug, Clone)]
pub struct Admin {
    pub container: String,
    pub socket: String,
    /// Where HAProxy loads its server state from at start (its `server-state-file`,
    /// inside the proxy container); rewritten after every change of the slots, so that a
    /// restarted HAProxy comes back serving what it served. `None`: not kept.
    pub state_file: Option<String>,
}

/// One server of a backend, from `show stat`: a slot berth fills, or a backup server.
#[derive(Debug, Clone, PartialEq)]
pub struct Slot {
    pub name: String,
    /// A backup server (`backup`): not a slot; takes traffic only while no slot is UP.
    pub backup: bool,
    /// `IP:PORT`.
    pub addr: String,
    /// HAProxy's status: `UP`, `DOWN`, `DRAIN`, `MAINT`, `no check`, `UP 1/2`, ...
    pub status: String,
    /// Current sessions on it.
    pub scur: u64,
}

impl Slot {
    /// In maintenance: takes no traffic, free for a new container.
    pub fn free(&self) -> bool {
        self.status.starts_with("MAINT")
    }
    pub fn up(&self) -> bool {
        self.status == "UP" || self.status == "no check"
    }
}

/// A container to name in a slot: its name (what the slot resolves) and its addresses
/// now (one per network).
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub name: String,
    pub ips: Vec<String>,
}

impl Target {
    /// The container's name and addresses; `None` without an address.
    pub fn of(c: &berth_core::docker::Container) -> Option<Target> {
        let ips: Vec<String> = c
            .networks
            .iter()
            .map(|(_, ip)| ip.clone())
            .filter(|ip| !ip.is_empty())
            .collect();
        (!ips.is_empty()).then(|| Target {
            name: c.name.clone(),
            ips,
        })
    }

    /// Whether `addr` (`IP:PORT`, as `show stat` has it) is one of its addresses.
    fn at(&self, addr: &str) -> bool {
        addr.rsplit_once(':')
            .is_some_and(|(ip, _)| self.ips.iter().any(|i| i == ip))
    }
}

/// What a switch did to one backend, to finish or undo it.
#[derive(Debug, Clone, Default)]
pub struct Moves {
    pub backend: String,
    /// The slots now naming the new containers.
    pub filled: Vec<String>,
    /// The slots that took traffic before (drained at the switch, freed at the end).
    pub old: Vec<String>,
}

impl Admin {
    /// The running container of `service` in the project, with the socket at `socket`,
    /// keeping the server state in `state_file` (empty: not kept).
    pub fn locate(
        compose: &Compose,
        service: &str,
        socket: &str,
        state_file: &str,
    ) -> Result<Option<Admin>> {
        let running = compose
            .containers(service)?
            .into_iter()
            .find(|c| c.state.running);
        Ok(running.map(|c| Admin {
            container: c.name,
            socket: socket.to_string(),
            state_file: (!state_file.is_empty()).then(|| state_file.to_string()),
        }))
    }

    fn cmd(&self, line: &str) -> Cmd {
        berth_core::docker::docker()
            .args([
                "exec",
                "-i",
                &self.container,
                "socat",
                "stdio",
                &self.socket,
            ])
            .stdin_bytes(format!("{line}\n"))
    }

    /// Send one command; its reply.
    pub fn send(&self, line: &str) -> Result<String> {
        self.cmd(line)
            .read()
            .with_context(|| format!("HAProxy admin socket {} in {}", self.socket, self.container))
    }

    /// Send a command whose success is an empty reply (or, for `set server ... addr`,
    /// HAProxy's "changed from" line); anything else is an error naming the reply.
    pub fn set(&self, line: &str) -> Result<()> {
        let reply = self.send(line)?;
        if accepted(&reply) {
            Ok(())
        } else {
            bail!("HAProxy refused `{line}`: {}", one_line(&reply))
        }
    }

    /// The server slots of `backend` (its backup servers left out); an error when there
    /// is no such backend.
    pub fn slots(&self, backend: &str) -> Result<Vec<Slot>> {
        let slots: Vec<Slot> = self
            .servers(backend)?
            .into_iter()
            .filter(|s| !s.backup)
            .collect();
        if slots.is_empty() {
            bail!(
                "HAProxy has no backend {backend:?} with server slots (add `backend {backend}` \
                 with `server s1 localhost:8080 disabled` ... lines to haproxy.cfg)"
            );
        }
        Ok(slots)
    }

    /// Every server of `backend`, slots and backup servers.
    pub fn servers(&self, backend: &str) -> Result<Vec<Slot>> {
        let out = self.send("show stat -1 4 -1")?;
        parse_stat(&out, backend)
    }

    /// Preflight: the backend exists and has `need` free slots. Without a backup server a
    /// warning: after `down` and `up` no slot names the new containers until a swap.
    pub fn check_free(&self, backend: &str, need: usize) -> Result<()> {
        let servers = self.servers(backend)?;
        if !servers.is_empty() && !servers.iter().any(|s| s.backup) {
            msg::warn(format!(
                "HAProxy backend {backend:?} has no backup server: after `docker compose down` \
                 and `up` (new containers, which no slot names) it answers 503 until the next \
                 swap; add `server-template fallback 4 {backend}:8080 backup enabled` to it \
                 (examples/haproxy/haproxy.cfg)"
            ));
        }
        let slots = self.slots(backend)?;
        let free = slots.iter().filter(|s| s.free()).count();
        if free < need {
            bail!(
                "HAProxy backend {backend:?} has {free} free server slot(s) (in maintenance), the \
                 swap needs {need}: add `server s{} localhost:8080 disabled` (and more) to it in \
                 haproxy.cfg",
                slots.len() + 1
            );
        }
        Ok(())
    }

    /// Name `targets` in free slots of `backend` (the container's name, resolved by
    /// HAProxy through Docker's DNS; its address and `port` set at once), and set them
    /// ready. Free slots left over are put in maintenance by berth (a slot whose name no
    /// longer resolves is free, but would take traffic again if a container got that
    /// name). The slots that took traffic before are returned as `old` (not touched yet).
    pub fn fill(&self, backend: &str, targets: &[Target], port: u16) -> Result<Moves> {
        let slots = self.slots(backend)?;
        let free: Vec<&Slot> = slots.iter().filter(|s| s.free()).collect();
        if free.len() < targets.len() {
            self.check_free(backend, targets.len())?;
        }
        for s in free
            .iter()
            .skip(targets.len())
            .filter(|s| s.status != "MAINT")
        {
            self.set(&format!("set server {backend}/{} state maint", s.name))?;
        }
        let mut m = Moves {
            backend: backend.to_string(),
            filled: Vec::new(),
            old: slots
                .iter()
                .filter(|s| !s.free())
                .map(|s| s.name.clone())
                .collect(),
        };
        for (slot, t) in free.iter().zip(targets) {
            let sv = format!("{backend}/{}", slot.name);
            m.filled.push(slot.name.clone());
            let r = self
                .set(&format!("set server {sv} state maint"))
                .and_then(|_| self.set(&format!("set server {sv} fqdn {}", t.name)))
                .map_err(|e| {
                    e.context(
                        "the slots need `resolvers` (a `resolvers docker` section with \
                         `nameserver docker 127.0.0.11:53`, and `resolvers docker` on the \
                         slots: examples/haproxy/haproxy.cfg)",
                    )
                })
                .and_then(|_| self.resolved(backend, &slot.name, t, port))
                .and_then(|_| self.set(&format!("set server {sv} state ready")));
            if let Err(e) = r {
                self.free(backend, &m.filled);
                return Err(e);
            }
        }
        Ok(m)
    }

    /// Wait until HAProxy resolved the name just given to `slot` to the container's
    /// address (at most [`RESOLVE_BOUND`]), then make sure the slot sends to `port`.
    fn resolved(&self, backend: &str, slot: &str, t: &Target, port: u16) -> Result<()> {
        let deadline = Instant::now() + RESOLVE_BOUND;
        loop {
            let addr = self
                .slots(backend)?
                .into_iter()
                .find(|s| s.name == slot)
                .map(|s| s.addr)
                .unwrap_or_default();
            if let Some((ip, p)) = addr.rsplit_once(':').filter(|_| t.at(&addr)) {
                if p != port.to_string() {
                    self.set(&format!(
                        "set server {backend}/{slot} addr {ip} port {port}"
                    ))?;
                }
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "HAProxy did not resolve {} (slot {backend}/{slot}) within {}: is the \
                     proxy on the container's network, with `resolvers docker` on the slots?",
                    t.name,
                    berth_core::human::limit(RESOLVE_BOUND)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until every filled slot is UP by HAProxy's own check (at most `bound`).
    pub fn wait_up(&self, moves: &[Moves], bound: Duration) -> Result<()> {
        let deadline = Instant::now() + bound;
        loop {
            let mut down = Vec::new();
            for m in moves {
                let slots = self.slots(&m.backend)?;
                for name in &m.filled {
                    match slots.iter().find(|s| &s.name == name) {
                        Some(s) if s.up() => {}
                        Some(s) => down.push(format!("{}/{name} {}", m.backend, s.status)),
                        None => down.push(format!("{}/{name} gone", m.backend)),
                    }
                }
            }
            if down.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "HAProxy did not see the new containers UP within {}: {}",
                    berth_core::human::limit(bound),
                    down.join(", ")
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// No new requests to these slots; the ones in hand finish.
    pub fn drain(&self, backend: &str, slots: &[String]) -> Result<()> {
        for s in slots {
            self.set(&format!("set server {backend}/{s} state drain"))?;
        }
        self.save_state();
        Ok(())
    }

    /// Slots back to maintenance (free), best effort: a failure is a warning.
    pub fn free(&self, backend: &str, slots: &[String]) {
        for s in slots {
            if let Err(e) = self.set(&format!("set server {backend}/{s} state maint")) {
                msg::warn(format!("{e:#}"));
            }
        }
        self.save_state();
    }

    /// Write HAProxy's `show servers state` into its server-state file (atomically: a
    /// temporary file renamed over it, inside the proxy container), which HAProxy loads
    /// when it starts (`load-server-state-from-file`): a restarted HAProxy comes back
    /// with the slots as they are now. Best effort: the switch is done, a failure here is
    /// a warning.
    pub fn save_state(&self) {
        let Some(file) = &self.state_file else {
            return;
        };
        let r = self.send("show servers state").and_then(|state| {
            if !state.starts_with("1\n# be_id") {
                bail!("`show servers state` answered {:?}", one_line(&state));
            }
            let state = names_set_at_runtime(&state);
            // The path is an argument of the fixed script, never part of it.
            berth_core::docker::docker()
                .args(["exec", "-i", &self.container, "sh", "-c"])
                .args([SAVE_SCRIPT, "berth-save-state", file])
                .stdin_bytes(state)
                .read()?;
            Ok(())
        });
        if let Err(e) = r {
            msg::warn(format!(
                "could not save HAProxy's server state to {file} in {} (a restart of HAProxy \
                 would lose the slots until the next swap): {e:#}",
                self.container
            ));
        }
    }

    /// The entries of the map `map` (`show map`): (key, value) in order.
    pub fn map_entries(&self, map: &str) -> Result<Vec<(String, String)>> {
        let out = self.send(&format!("show map {}", cli_escape(map)))?;
        if out.starts_with("Unknown map") || out.starts_with("Missing map") {
            bail!(
                "HAProxy has no map {map:?} (declare it in haproxy.cfg: see \
                 examples/haproxy/haproxy.cfg): {}",
                one_line(&out)
            );
        }
        Ok(parse_map(&out))
    }

    /// Replace the whole content of `map` by `entries`, atomically (`prepare map`, the
    /// entries into that version, `commit map`): a request sees the old map or the new
    /// one, never a part. Done when `show map` lists exactly `entries`.
    pub fn replace_map(&self, map: &str, entries: &[(String, String)]) -> Result<()> {
        let m = cli_escape(map);
        let reply = self.send(&format!("prepare map {m}"))?;
        let version = reply
            .trim()
            .strip_prefix("New version created: ")
            .and_then(|v| v.parse::<u64>().ok())
            .with_context(|| {
                format!("HAProxy refused `prepare map {map}`: {}", one_line(&reply))
            })?;
        let mut line: Vec<String> = entries
            .iter()
            .map(|(k, v)| format!("add map @{version} {m} {} {}", cli_escape(k), cli_escape(v)))
            .collect();
        line.push(format!("commit map @{version} {m}"));
        let reply = self.send(&line.join("; "))?;
        if !reply.trim().is_empty() {
            bail!("HAProxy refused to update map {map}: {}", one_line(&reply));
        }
        let blank = |s: &str| s.replace(|c: char| c.is_control(), " ");
        let want: Vec<(String, String)> =
            entries.iter().map(|(k, v)| (blank(k), blank(v))).collect();
        let now = self.map_entries(map)?;
        if now != want {
            bail!("HAProxy's map {map} does not hold what berth committed: {now:?}");
        }
        Ok(())
    }

    /// Wait (at most `bound`) until no session is in hand on the old slots and the backup
    /// servers. Returns
    /// whether they were idle in time.
    pub fn wait_idle(&self, moves: &[Moves], bound: Duration) -> bool {
        let deadline = Instant::now() + bound;
        loop {
            // The old slots, and the backup servers: after `down` and `up` the old
            // containers served through them (no slot named them).
            let busy = moves.iter().try_fold(0u64, |acc, m| {
                let servers = self.servers(&m.backend)?;
                Ok::<u64, anyhow::Error>(
                    acc + servers
                        .iter()
                        .filter(|s| s.backup || m.old.contains(&s.name))
                        .map(|s| s.scur)
                        .sum::<u64>(),
                )
            });
            match busy {
                Ok(0) => return true,
                Ok(_) => {}
                Err(e) => {
                    msg::warn(format!("{e:#}"));
                    return false;
                }
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Make `backend`'s live slots name exactly `keep`: the missing ones filled and
    /// waited UP, the others drained. Returns the moves ([`Admin::free`] their `old` once
    /// those containers are gone). For convergence after a crash.
    pub fn point(
        &self,
        backend: &str,
        keep: &[Target],
        port: u16,
        bound: Duration,
    ) -> Result<Moves> {
        let slots = self.slots(backend)?;
        let names = |s: &Slot, t: &Target| t.at(&s.addr) && s.addr.ends_with(&format!(":{port}"));
        let live = |t: &Target| slots.iter().any(|s| !s.free() && names(s, t));
        let missing: Vec<Target> = keep.iter().filter(|t| !live(t)).cloned().collect();
        let mut m = self.fill(backend, &missing, port)?;
        self.wait_up(std::slice::from_ref(&m), bound)?;
        m.old = slots
            .iter()
            .filter(|s| !s.free() && !keep.iter().any(|t| names(s, t)))
            .map(|s| s.name.clone())
            .collect();
        self.drain(backend, &m.old)?;
        Ok(m)
    }
}

/// `show servers state` with every server's name marked as set at runtime (the flag
/// 0x40 of `srv_admin_state`, SRV_ADMF_HMAINT): HAProxy applies a saved `srv_fqdn` only
/// with that flag, and drops the flag from what it reports once it has applied it, so a
/// state saved after a restart would otherwise send the slots back to haproxy.cfg's
/// `localhost` at the next one. A name equal to the configuration's is left as it is by
/// HAProxy whatever the flag.
fn names_set_at_runtime(state: &str) -> String {
    let mut out = String::new();
    for line in state.lines() {
        let mut f: Vec<String> = line.split(' ').map(str::to_string).collect();
        let server = !line.starts_with('#') && f.len() > 17 && f[17] != "-";
        match f.get(6).map(|a| a.parse::<u32>()) {
            Some(Ok(admin)) if server => f[6] = (admin | 0x40).to_string(),
            _ => {}
        }
        out.push_str(&f.join(" "));
        out.push('\n');
    }
    out
}

/// How long HAProxy may take to resolve a container's name given to a slot (it asks
/// Docker's DNS at once; `timeout retry` in haproxy.cfg after a lost answer).
const RESOLVE_BOUND: Duration = Duration::from_secs(10);

/// Writes stdin to `$1` atomically (a sibling temporary file renamed over it).
const SAVE_SCRIPT: &str = r#"cat > "$1.berth-tmp" && mv -f "$1.berth-tmp" "$1""#;

/// A word for HAProxy's CLI: backslash before the characters that split arguments or
/// commands (blanks, `;`) and before `\` itself; control characters become blanks.
pub fn cli_escape(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        match c {
            ' ' | '\t' | ';' | '\\' => {
                out.push('\\');
                out.push(if c == '\t' { ' ' } else { c });
            }
            c if c.is_control() => out.push_str("\\ "),
            c => out.push(c),
        }
    }
    out
}

/// `show map` output: `0xADDR KEY VALUE` per line (the value may hold blanks).
fn parse_map(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once(' ')?;
            let (k, v) = rest.split_once(' ').unwrap_or((rest, ""));
            Some((k.to_string(), v.to_string()))
        })
        .collect()
}

/// A reply that means success: empty, or the line `set server ... addr` answers with.
fn accepted(reply: &str) -> bool {
    let r = reply.trim();
    r.is_empty()
        || r.contains(" changed from ")
        || r.contains(" changed its FQDN from ")
        || r.starts_with("no need to change")
}

fn one_line(reply: &str) -> String {
    let r: Vec<&str> = reply
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    r.join(" ")
}

/// The server rows of `backend` in `show stat` CSV output (by the header's column names).
fn parse_stat(csv: &str, backend: &str) -> Result<Vec<Slot>> {
    let mut lines = csv.lines();
    let header = lines
        .next()
        .and_then(|h| h.strip_prefix("# "))
        .context("HAProxy's `show stat` answered without its header")?;
    let cols: Vec<&str> = header.split(',').collect();
    let col = |name: &str| {
        cols.iter()
            .position(|c| *c == name)
            .with_context(|| format!("HAProxy's `show stat` has no column {name}"))
    };
    let (px, sv, scur, status, addr, bck) = (
        col("pxname")?,
        col("svname")?,
        col("scur")?,
        col("status")?,
        col("addr")?,
        col("bck")?,
    );
    let mut out = Vec::new();
    for l in lines {
        let f: Vec<&str> = l.split(',').collect();
        if f.len() < cols.len() || f[px] != backend || matches!(f[sv], "FRONTEND" | "BACKEND") {
            continue;
        }
        out.push(Slot {
            name: f[sv].to_string(),
            backup: f[bck] == "1",
            addr: f[addr].to_string(),
            status: f[status].to_string(),
            scur: f[scur].parse().unwrap_or(0),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_rows_of_one_backend() {
        let csv = "# pxname,svname,qcur,qmax,scur,status,bck,addr,\n\
                   web,FRONTEND,,,3,OPEN,,,\n\
                   web,s1,0,0,2,DRAIN,0,172.18.0.5:8080,\n\
                   web,s2,0,0,0,UP,0,172.18.0.7:8080,\n\
                   web,s3,0,0,0,MAINT (resolution),0,,\n\
                   web,fallback1,0,0,1,UP,1,172.18.0.5:8080,\n\
                   api,s1,0,0,0,UP,0,172.18.0.9:8080,\n\
                   web,BACKEND,0,0,2,UP,1,,\n";
        let s = parse_stat(csv, "web").unwrap();
        assert_eq!(s.len(), 4);
        assert!(s[3].backup && !s[0].backup);
        assert_eq!(s[0].scur, 2);
        assert!(!s[0].free() && !s[0].up());
        assert!(s[1].up() && !s[1].free());
        assert!(s[2].free());
        assert_eq!(s[1].addr, "172.18.0.7:8080");
        assert!(parse_stat(csv, "nope").unwrap().is_empty());
        assert!(parse_stat("Unknown command\n", "web").is_err());
    }

    #[test]
    fn saved_names_are_marked_as_set_at_runtime() {
        let state = "1\n\
            # be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
            3 web 1 s1 172.18.0.5 2 4 1 1 8 6 3 2 6 0 0 0 shop-web-2 8080 - 0 0 - - 0\n\
            3 web 2 s2 - 0 37 1 1 5 1 0 0 14 0 0 0 localhost 8080 - 0 0 - - 0\n\
            3 web 3 s3 172.18.0.6 2 68 1 1 8 6 3 2 6 0 0 0 shop-web-3 8080 - 0 0 - - 0\n\
            4 api 1 a1 172.18.0.9 2 0 1 1 8 6 3 2 6 0 0 0 - 8080 - 0 0 - - 0\n";
        let out = names_set_at_runtime(state);
        let admin: Vec<&str> = out
            .lines()
            .skip(2)
            .map(|l| l.split(' ').nth(6).unwrap())
            .collect();
        assert_eq!(admin, ["68", "101", "68", "0"]);
        assert!(out.starts_with("1\n# be_id be_name"));
        assert!(out.ends_with("- - 0\n"));
    }

    #[test]
    fn replies() {
        assert!(accepted("\n"));
        assert!(accepted(
            "IP changed from '127.0.0.1' to '172.18.0.7', port changed from '8080' to '8080' by 'stats socket command'\n"
        ));
        assert!(accepted(
            "no need to change the addr, port changed from '8080' to '8404' by 'stats socket command'\n"
        ));
        assert!(accepted(
            "web/s1 changed its FQDN from localhost to shop-web-2 by 'stats socket command'\n"
        ));
        assert!(!accepted("No such server.\n\n"));
        assert_eq!(one_line("No such server.\n\n"), "No such server.");
    }

    #[test]
    fn map_words_are_escaped_and_read_back() {
        assert_eq!(
            cli_escape("<p>5 o&#39;clock\\ \tx\n</p>"),
            "<p>5\\ o&#39\\;clock\\\\\\ \\ x\\ </p>"
        );
        let out = "0x7f06dc0465b0 page <p>x é y</p>\n0x7f06dc0466d0 retry 30\n0x7f06dc0467f0 /healthz except\n";
        assert_eq!(
            parse_map(out),
            [
                ("page".to_string(), "<p>x é y</p>".to_string()),
                ("retry".into(), "30".into()),
                ("/healthz".into(), "except".into())
            ]
        );
        assert!(parse_map("\n").is_empty());
    }

    #[test]
    fn commands_go_on_stdin() {
        let a = Admin {
            container: "shop-proxy-1".into(),
            socket: "/run/haproxy/admin.sock".into(),
            state_file: None,
        };
        assert_eq!(
            a.cmd("show stat").display(),
            "docker exec -i shop-proxy-1 socat stdio /run/haproxy/admin.sock"
        );
    }
}
