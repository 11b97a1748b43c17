//! eBPF loading and attaching; aya types stay in this module.
//!
//! The kernel object is read at run time, so the `mcp-guard` binary builds without
//! the eBPF toolchain. Its process programs are classic `sched/*` tracepoints: their
//! fields have stable, documented offsets (tracefs `format` files) where `tp_btf`
//! would need `task_struct` layouts. Attaching one needs tracefs, so
//! [`Observer::load`] mounts it at [`TRACEFS`] when it is missing. Data is captured by
//! one raw tracepoint on `sys_exit`, which needs no tracefs.
//!
//! The kernel captures data only for processes in its watch map: the roots put there
//! with [`Observer::watch`] and, added by the kernel at fork, all their descendants.

use std::{
    ffi::OsString,
    fmt, io,
    os::unix::ffi::OsStringExt as _,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{ProgramError, RawTracePoint, TracePoint},
};
use mcp_guard_common::{
    ABI_SECTION, ABI_VERSION, CONFIG_MAP, DataHeader, EVENTS_MAP, ExecEvent, ExitEvent, FDS_MAP,
    LAYOUT_MAP, LOST_MAP, Layout, MAX_CAPTURE, MAYBE_WATCHED_MAP, UnfollowedEvent, WATCHED_MAP,
    Watch, config, data, fd_key, kind,
};
use tokio::io::{Interest, unix::AsyncFd};

pub mod btf;

/// Environment variable naming the eBPF object; when set, no other path is tried.
pub const OBJECT_ENV: &str = "MCP_GUARD_BPF_OBJECT";
/// Where packages install the eBPF object.
pub const INSTALLED_OBJECT: &str = "/usr/lib/mcp-guard/mcp-guard-ebpf.o";
/// File name looked for beside the running executable.
pub const OBJECT_FILE_NAME: &str = "mcp-guard-ebpf.o";
/// The oldest kernel release whose programs are known to load: `bpf_loop` (5.17) copies
/// each payload. Older releases are tried anyway (distributions backport helpers) and,
/// when the programs do not load, the error says why.
pub const MIN_KERNEL: (u32, u32) = (5, 17);

/// Whether a kernel release (`6.1.0-27-amd64`) is `min` or later; an unreadable one is not.
pub fn kernel_at_least(release: &str, min: (u32, u32)) -> bool {
    let mut parts = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|p| !p.is_empty());
    let (Some(major), Some(minor)) = (
        parts.next().and_then(|p| p.parse::<u32>().ok()),
        parts.next().and_then(|p| p.parse::<u32>().ok()),
    ) else {
        return false;
    };
    (major, minor) >= min
}

/// Where tracefs is expected, and mounted when absent.
pub const TRACEFS: &str = "/sys/kernel/tracing";

/// The programs in the object, each attached to the `sched` tracepoint of its name.
const SCHED_PROGRAMS: [&str; 3] = [
    "sched_process_fork",
    "sched_process_exec",
    "sched_process_exit",
];

/// The raw tracepoint program that captures data, attached to the tracepoint of its name.
const DATA_PROGRAM: &str = "sys_exit";

/// Default size of the kernel-to-user ring buffer.
pub const DEFAULT_RING_BYTES: u32 = 16 << 20;

/// How the kernel side is set up at load.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Ring buffer size: a power of two, a multiple of the page size.
    pub ring_bytes: u32,
    /// Most bytes of one read or write captured, at most [`MAX_CAPTURE`].
    pub max_capture: u32,
    /// Watch flags every new program gets at exec (`watch::PROBE` and, for a gate,
    /// `watch::GATE`); `0`: only what user space watches is watched.
    pub probe: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            ring_bytes: DEFAULT_RING_BYTES,
            max_capture: MAX_CAPTURE as u32,
            probe: 0,
        }
    }
}

/// Why the observer could not load, attach, watch or read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no eBPF object found (tried {})", Paths(tried))]
    NotFound { tried: Vec<PathBuf> },
    #[error("failed to read eBPF object {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("failed to mount tracefs at {TRACEFS}")]
    MountTracefs(#[source] nix::Error),
    #[error("failed to load eBPF object {}", path.display())]
    Load {
        path: PathBuf,
        // Boxed: EbpfError alone would make every Result of this module large.
        #[source]
        source: Box<EbpfError>,
    },
    #[error(
        "eBPF object {} was built for another mcp-guard ({}), this one needs ABI {want}: install the object built with this binary (`cargo xtask build-ebpf`)",
        path.display(),
        match found { Some(v) => format!("ABI {v}"), None => "no ABI section".into() }
    )]
    Abi {
        path: PathBuf,
        found: Option<u32>,
        want: u32,
    },
    #[error("eBPF object has no map `{name}`")]
    MissingMap { name: &'static str },
    #[error("eBPF map `{name}` is not what user space expects")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("eBPF object has no program `{name}`")]
    MissingProgram { name: &'static str },
    #[error("failed to load or attach eBPF program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("failed to update the watch of tgid {tgid}")]
    Watch {
        tgid: u32,
        #[source]
        source: MapError,
    },
    #[error("ring buffer size {0} is not a power of two of at least one page")]
    RingSize(u32),
    #[error("failed to configure the kernel programs")]
    Config(#[source] MapError),
    #[error("the eBPF programs do not load on kernel {found}, which is older than {}.{} (they need the bpf_loop helper; a distribution kernel that backports it loads them)", MIN_KERNEL.0, MIN_KERNEL.1)]
    KernelTooOld {
        found: String,
        #[source]
        source: Box<ProgramError>,
    },
    #[error(
        "tracepoint {event} on this kernel ({kernel}): {why}; the observer cannot read its records"
    )]
    Format {
        event: &'static str,
        kernel: String,
        why: String,
    },
    #[error("the event stream was already taken")]
    EventsTaken,
    #[error("failed to wait on the event ring buffer")]
    Poll(#[source] io::Error),
}

/// Formats the paths tried, for [`Error::NotFound`].
struct Paths<'a>(&'a [PathBuf]);

impl fmt::Display for Paths<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, path) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{}", path.display())?;
        }
        Ok(())
    }
}

/// The eBPF object this binary carries, when it was built with one
/// (`MCP_GUARD_EMBED_BPF`, as `cargo xtask package` does).
#[cfg(embedded_bpf)]
pub const EMBEDDED: Option<&[u8]> = Some(include_bytes!(concat!(
    env!("OUT_DIR"),
    "/mcp-guard-ebpf.o"
)));
/// The eBPF object this binary carries: none in this build.
#[cfg(not(embedded_bpf))]
pub const EMBEDDED: Option<&[u8]> = None;

/// Where the eBPF object comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    /// The one built into this binary.
    Embedded,
    File(PathBuf),
}

impl fmt::Display for Object {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Object::Embedded => f.write_str("the eBPF object built into this binary"),
            Object::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Object {
    /// The object's bytes.
    pub fn bytes(&self) -> Result<std::borrow::Cow<'static, [u8]>, Error> {
        match self {
            Object::Embedded => EMBEDDED
                .map(std::borrow::Cow::Borrowed)
                .ok_or(Error::NotFound { tried: Vec::new() }),
            Object::File(path) => {
                std::fs::read(path)
                    .map(std::borrow::Cow::Owned)
                    .map_err(|source| Error::Read {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    /// A name for messages and paths in errors.
    fn path(&self) -> PathBuf {
        match self {
            Object::Embedded => PathBuf::from("(built in)"),
            Object::File(p) => p.clone(),
        }
    }
}

/// Finds the eBPF object: `$MCP_GUARD_BPF_OBJECT` alone when set, else the one built into
/// this binary, else [`INSTALLED_OBJECT`], else [`OBJECT_FILE_NAME`] beside the current
/// executable.
pub fn find_object() -> Result<Object, Error> {
    let env = std::env::var_os(OBJECT_ENV).filter(|v| !v.is_empty());
    if env.is_none() && EMBEDDED.is_some() {
        return Ok(Object::Embedded);
    }
    let exe = std::env::current_exe().ok();
    let tried = candidates(env, exe.as_deref());
    match tried.iter().find(|path| path.is_file()) {
        Some(path) => Ok(Object::File(path.clone())),
        None => Err(Error::NotFound { tried }),
    }
}

fn candidates(env: Option<OsString>, exe: Option<&Path>) -> Vec<PathBuf> {
    match env {
        Some(path) => vec![PathBuf::from(path)],
        None => std::iter::once(PathBuf::from(INSTALLED_OBJECT))
            .chain(
                exe.and_then(Path::parent)
                    .map(|dir| dir.join(OBJECT_FILE_NAME)),
            )
            .collect(),
    }
}

/// The loaded and attached programs. Dropping it detaches them.
pub struct Observer {
    // Owns the programs and their links.
    _ebpf: Ebpf,
    config: Array<MapData, u32>,
    watched: HashMap<MapData, u32, Watch>,
    maybe_watched: Array<MapData, u8>,
    fds: HashMap<MapData, u64, u8>,
    lost: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    /// The names of the attached programs.
    pub programs: Vec<&'static str>,
    /// The kernel's structure layout was read from its BTF: a captured process's stdin and
    /// stdout are followed through any descriptor, not only by number.
    pub follows_files: bool,
}

impl Observer {
    /// Loads the object at `path` with the default [`Settings`] and attaches its programs.
    pub fn load(path: &Path) -> Result<Self, Error> {
        Self::load_with(path, Settings::default())
    }

    /// Loads the object at `path` and attaches its programs. Needs root.
    pub fn load_with(path: &Path, settings: Settings) -> Result<Self, Error> {
        Self::load_object(&Object::File(path.to_owned()), settings)
    }

    /// Loads `object` and attaches its programs. Needs root.
    pub fn load_object(object: &Object, settings: Settings) -> Result<Self, Error> {
        let path = &object.path();
        let page = 4096;
        if !settings.ring_bytes.is_power_of_two() || settings.ring_bytes < page {
            return Err(Error::RingSize(settings.ring_bytes));
        }
        ensure_tracefs()?;
        let bytes = object.bytes()?;
        check_abi(path, &bytes)?;
        // One byte per possible pid (32768 to 4194304): the system-call path's first test.
        let pid_max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(1 << 22)
            .clamp(1024, 1 << 22);
        let mut ebpf = EbpfLoader::new()
            .map_max_entries(EVENTS_MAP, settings.ring_bytes)
            .map_max_entries(MAYBE_WATCHED_MAP, pid_max)
            .load(&bytes)
            .map_err(|source| Error::Load {
                path: path.to_owned(),
                source: Box::new(source),
            })?;
        let mut cfg: Array<MapData, u32> = take_map(&mut ebpf, CONFIG_MAP)?;
        cfg.set(
            config::MAX_CAPTURE,
            settings.max_capture.min(MAX_CAPTURE as u32),
            0,
        )
        .map_err(Error::Config)?;
        // The record layouts of this kernel, before any program runs.
        for (index, value) in format::offsets(Path::new(TRACEFS))? {
            cfg.set(index, value, 0).map_err(Error::Config)?;
        }
        cfg.set(config::PROBE, settings.probe, 0)
            .map_err(Error::Config)?;
        // Without the structure layout, descriptors are followed by number only: stdin
        // reopened through /proc/self/fd/0 or received over a socket is not seen.
        let follows_files = match btf::layout() {
            Ok(layout) => {
                // Borrowed, not taken: the map must stay open for the programs to load.
                let name = LAYOUT_MAP;
                let map = ebpf.map_mut(name).ok_or(Error::MissingMap { name })?;
                let mut map: Array<&mut MapData, Layout> =
                    Array::try_from(map).map_err(|source| Error::Map { name, source })?;
                map.set(0, layout, 0).map_err(Error::Config)?;
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "no kernel structure layout: stdio reached through another descriptor (/proc/self/fd, SCM_RIGHTS) is not followed");
                false
            }
        };
        // A kernel before 5.17 (without a backported bpf_loop) fails here: say so.
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let failed = |name: &'static str, source: ProgramError| {
            if kernel_at_least(release.trim(), MIN_KERNEL) {
                Error::Program { name, source }
            } else {
                Error::KernelTooOld {
                    found: release.trim().to_string(),
                    source: Box::new(source),
                }
            }
        };
        for name in SCHED_PROGRAMS {
            let program: &mut TracePoint = program(&mut ebpf, name)?;
            program
                .load()
                .and_then(|()| program.attach("sched", name).map(drop))
                .map_err(|source| failed(name, source))?;
        }
        let name = DATA_PROGRAM;
        let program: &mut RawTracePoint = program(&mut ebpf, name)?;
        program
            .load()
            .and_then(|()| program.attach(name).map(drop))
            .map_err(|source| failed(name, source))?;
        let watched = take_map(&mut ebpf, WATCHED_MAP)?;
        let maybe_watched = take_map(&mut ebpf, MAYBE_WATCHED_MAP)?;
        let fds = take_map(&mut ebpf, FDS_MAP)?;
        let lost = take_map(&mut ebpf, LOST_MAP)?;
        let events = take_map(&mut ebpf, EVENTS_MAP)?;
        let mut programs = SCHED_PROGRAMS.to_vec();
        programs.push(DATA_PROGRAM);
        Ok(Self {
            _ebpf: ebpf,
            config: cfg,
            watched,
            maybe_watched,
            fds,
            lost,
            events: Some(events),
            programs,
            follows_files,
        })
    }

    /// Watches `tgid` and, from now on, every process it forks; the children are
    /// captured (`watch::CAPTURE`) whatever `flags` say about `tgid` itself.
    pub fn watch(&mut self, tgid: u32, flags: u32) -> Result<(), Error> {
        // Marked first: the kernel looks in the watch map only for marked pids. A pid
        // beyond the array (pid_max raised since) is always looked up.
        match self.maybe_watched.set(tgid, 1, 0) {
            Ok(()) | Err(MapError::OutOfBounds { .. }) => {}
            Err(source) => return Err(Error::Watch { tgid, source }),
        }
        // Parent 0: a root of a watched tree, not a child the kernel saw forked.
        self.watched
            .insert(tgid, Watch { parent: 0, flags }, 0)
            .map_err(|source| Error::Watch { tgid, source })
    }

    /// Changes the flags new programs get at exec ([`Settings::probe`]).
    pub fn set_probe(&mut self, flags: u32) -> Result<(), Error> {
        self.config
            .set(config::PROBE, flags, 0)
            .map_err(Error::Config)
    }

    /// Watches `tgid` as an agent host: not captured itself, its children are.
    pub fn watch_tgid(&mut self, tgid: u32) -> Result<(), Error> {
        self.watch(tgid, mcp_guard_common::watch::HOST)
    }

    /// The watch flags of `tgid`, if it is watched.
    pub fn watched(&self, tgid: u32) -> Option<Watch> {
        self.watched.get(&tgid, 0).ok()
    }

    /// Changes the flags of a watched `tgid`, keeping its parent; false if it is not watched.
    pub fn set_flags(&mut self, tgid: u32, flags: u32) -> Result<bool, Error> {
        let Some(mut w) = self.watched(tgid) else {
            return Ok(false);
        };
        w.flags = flags;
        self.watched
            .insert(tgid, w, 0)
            .map_err(|source| Error::Watch { tgid, source })?;
        Ok(true)
    }

    /// Says what descriptor `fd` of `tgid` carries (`mcp_guard_common::origin`), for a
    /// process already watched: captured as that, or not at all (`origin::NONE`).
    pub fn set_fd(&mut self, tgid: u32, fd: u32, origin: u8) -> Result<(), Error> {
        self.fds
            .insert(fd_key(tgid, fd), origin, 0)
            .map_err(|source| Error::Watch { tgid, source })
    }

    /// Forgets every descriptor of `tgid` (it exited; its pid may be reused).
    pub fn forget_fds(&mut self, tgid: u32) {
        let keys: Vec<u64> = self
            .fds
            .keys()
            .filter_map(Result::ok)
            .filter(|k| (k >> 32) as u32 == tgid)
            .collect();
        for k in keys {
            let _ = self.fds.remove(&k);
        }
    }

    /// Events the kernel could not put in the ring buffer, summed over CPUs.
    pub fn lost(&self) -> u64 {
        self.lost
            .get(&0, 0)
            .map(|per_cpu| per_cpu.iter().sum())
            .unwrap_or(0)
    }

    /// Stops watching `tgid`; children already watched stay watched.
    pub fn unwatch_tgid(&mut self, tgid: u32) -> Result<(), Error> {
        match self.watched.remove(&tgid) {
            Ok(()) | Err(MapError::KeyNotFound) => {
                let _ = self.maybe_watched.set(tgid, 0, 0);
                Ok(())
            }
            Err(source) => Err(Error::Watch { tgid, source }),
        }
    }

    /// The event stream, once. Must be called inside a tokio runtime.
    pub fn events(&mut self) -> Result<Events, Error> {
        let ring = self.events.take().ok_or(Error::EventsTaken)?;
        // SAFETY: the RingBuf owns its map fd, and the AsyncFd owns the RingBuf
        // until both are dropped, so the fd stays open and the same.
        unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
            .map(|fd| Events { fd })
            .map_err(|err| Error::Poll(err.into()))
    }
}

/// The ABI version an eBPF object carries in its [`ABI_SECTION`], if it is an ELF file with
/// one.
pub fn object_abi(bytes: &[u8]) -> Option<u32> {
    use object::{Object as _, ObjectSection as _};
    let file = object::File::parse(bytes).ok()?;
    let data = file.section_by_name(ABI_SECTION)?.data().ok()?;
    Some(u32::from_le_bytes(data.get(..4)?.try_into().ok()?))
}

/// Refuses an object built for another version of the shared types and maps.
/// Checks that `object` was built for this binary (its ABI), without loading it.
pub fn check_object(object: &Object, bytes: &[u8]) -> Result<(), Error> {
    check_abi(&object.path(), bytes)
}

fn check_abi(path: &Path, bytes: &[u8]) -> Result<(), Error> {
    match object_abi(bytes) {
        Some(v) if v == ABI_VERSION => Ok(()),
        found => Err(Error::Abi {
            path: path.to_owned(),
            found,
            want: ABI_VERSION,
        }),
    }
}

/// The program `name` of the object, as the kind `T` it must be.
fn program<'a, T>(ebpf: &'a mut Ebpf, name: &'static str) -> Result<&'a mut T, Error>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or(Error::MissingProgram { name })?
        .try_into()
        .map_err(|source| Error::Program { name, source })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap { name })?;
    T::try_from(map).map_err(|source| Error::Map { name, source })
}

/// Mounts tracefs at [`TRACEFS`] unless it is already there. Must run before the
/// first attach: aya looks for tracefs once per process.
fn ensure_tracefs() -> Result<(), Error> {
    let mounted = || Path::new(TRACEFS).join("events").is_dir();
    if mounted() {
        return Ok(());
    }
    tracing::info!(path = TRACEFS, "mounting tracefs");
    match nix::mount::mount(
        Some("tracefs"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    ) {
        Ok(()) => Ok(()),
        // Another loader (a thread here or another process) mounted it first: EBUSY.
        Err(_) if mounted() => Ok(()),
        Err(err) => Err(Error::MountTracefs(err)),
    }
}

/// Events from the kernel, in the order the ring buffer holds them.
pub struct Events {
    fd: AsyncFd<RingBuf<MapData>>,
}

impl Events {
    /// Waits until events are ready, then moves up to `max` of them into `out`.
    pub async fn batch(&mut self, out: &mut Vec<Event>, max: usize) -> Result<(), Error> {
        loop {
            let mut guard = self.fd.readable_mut().await.map_err(Error::Poll)?;
            while out.len() < max {
                let Some(item) = guard.get_inner_mut().next() else {
                    break;
                };
                if let Some(event) = Event::decode(&item) {
                    out.push(event);
                }
            }
            if !out.is_empty() {
                return Ok(());
            }
            guard.clear_ready();
        }
    }

    /// Waits for the next event. Bound it with `tokio::time::timeout`.
    pub async fn next(&mut self) -> Result<Event, Error> {
        loop {
            let mut guard = self.fd.readable_mut().await.map_err(Error::Poll)?;
            while let Some(item) = guard.get_inner_mut().next() {
                if let Some(event) = Event::decode(&item) {
                    return Ok(event);
                }
            }
            // Only clears if nothing arrived since the guard was taken.
            guard.clear_ready();
        }
    }
}

/// A decoded kernel event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Exec(Exec),
    Exit { tgid: u32 },
    Data(Data),
    Socket(Socket),
    Unfollowed(Unfollowed),
}

/// A captured process moved bytes on a captured descriptor with a system call the kernel
/// program cannot copy from (`splice`, `tee`, `sendfile`, `copy_file_range`, `vmsplice`,
/// `recvmmsg`, `sendmmsg`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unfollowed {
    pub tgid: u32,
    pub fd: u32,
    /// The x86-64 system call number; [`Unfollowed::call`] names it.
    pub syscall: u32,
    /// The descriptor was read from (true) or written to.
    pub inbound: bool,
    /// The descriptor was handed to another process (`SCM_RIGHTS`); `inbound` is true,
    /// since whoever receives it can read what the host sends.
    pub passed: bool,
    /// What the descriptor carries: a `mcp_guard_common::origin` value.
    pub origin: u8,
    /// The kernel killed the process before the call returned (a gated read of stdin).
    pub killed: bool,
}

impl Unfollowed {
    /// The system call's name.
    pub fn call(&self) -> &'static str {
        use mcp_guard_common::nr;
        match u64::from(self.syscall) {
            nr::SENDFILE => "sendfile",
            nr::SPLICE => "splice",
            nr::TEE => "tee",
            nr::VMSPLICE => "vmsplice",
            nr::RECVMMSG => "recvmmsg",
            nr::SENDMMSG => "sendmmsg",
            nr::COPY_FILE_RANGE => "copy_file_range",
            nr::IO_URING_SETUP => "io_uring_setup",
            nr::PIDFD_GETFD => "pidfd_getfd",
            nr::SENDMSG => "sendmsg",
            _ => "unknown",
        }
    }
}

/// A watched process connected to (or accepted) a local socket; its data on `fd` is
/// captured from now on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Socket {
    pub tgid: u32,
    pub fd: u32,
    /// The process is the server side.
    pub accepted: bool,
    /// `AF_UNIX` (1), `AF_INET` (2), `AF_INET6` (10), 0 if unknown.
    pub family: u16,
    /// The peer's TCP port (connect), else 0.
    pub port: u16,
}

/// One chunk of the bytes one system call moved on a watched descriptor.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Data {
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// Read by the process (true) or written by it.
    pub inbound: bool,
    /// What the descriptor carries: a `mcp_guard_common::origin` value.
    pub origin: u8,
    pub cpu: u32,
    /// Per-CPU chunk sequence number.
    pub seq: u64,
    /// Bytes the call moved, and where this chunk starts in them.
    pub total: u32,
    pub offset: u32,
    /// `mcp_guard_common::data` bits.
    pub flags: u8,
    pub payload: Vec<u8>,
}

impl Data {
    pub fn last(&self) -> bool {
        self.flags & data::LAST != 0
    }
    /// The call moved more than was captured (or a chunk could not be read).
    pub fn incomplete(&self) -> bool {
        self.flags & (data::CUT | data::FAULT) != 0
    }
    /// The process is stopped until user space continues or kills it.
    pub fn gated(&self) -> bool {
        self.flags & data::GATED != 0
    }
}

/// A watched process exec'd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exec {
    pub pid: u32,
    pub tgid: u32,
    /// tgid of the process that forked it; 0 for a root watched from user space.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Its watch flags; 0 when not watched.
    pub watch: u32,
    /// CLOCK_MONOTONIC, nanoseconds.
    pub ktime_ns: u64,
    pub comm: String,
    /// As passed to `execve`; at most `FILENAME_LEN - 1` bytes.
    pub filename: PathBuf,
}

/// The `T` at the start of a ring buffer record, if the record is long enough; records
/// are not aligned for `T`.
fn read<T: bytemuck::Pod>(record: &[u8]) -> Option<T> {
    record
        .get(..size_of::<T>())
        .map(bytemuck::pod_read_unaligned)
}

impl Event {
    /// Decodes one ring buffer record; `None` for a kind or size this build does
    /// not know, which is skipped rather than failing the stream.
    fn decode(record: &[u8]) -> Option<Self> {
        let kind: u32 = read(record)?;
        match kind {
            kind::EXEC => Some(Self::Exec(Exec::from(&read::<ExecEvent>(record)?))),
            kind::EXIT => Some(Self::Exit {
                tgid: read::<ExitEvent>(record)?.tgid,
            }),
            kind::SOCKET => {
                let raw: mcp_guard_common::SocketEvent = read(record)?;
                Some(Self::Socket(Socket {
                    tgid: raw.tgid,
                    fd: raw.fd,
                    accepted: raw.accepted != 0,
                    family: raw.family,
                    port: raw.port,
                }))
            }
            kind::UNFOLLOWED => {
                let raw: UnfollowedEvent = read(record)?;
                Some(Self::Unfollowed(Unfollowed {
                    tgid: raw.tgid,
                    fd: raw.fd,
                    syscall: raw.syscall,
                    inbound: raw.dir != mcp_guard_common::dir::OUT,
                    passed: raw.dir == mcp_guard_common::dir::PASS,
                    origin: raw.origin,
                    killed: raw.killed != 0,
                }))
            }
            kind::DATA => {
                let h: DataHeader = read(record)?;
                let payload = record
                    .get(size_of::<DataHeader>()..size_of::<DataHeader>() + h.len as usize)?;
                Some(Self::Data(Data {
                    tgid: h.tgid,
                    tid: h.tid,
                    fd: h.fd,
                    inbound: h.dir == mcp_guard_common::dir::IN,
                    origin: h.origin,
                    cpu: h.cpu,
                    seq: h.seq,
                    total: h.total,
                    offset: h.offset,
                    flags: h.flags,
                    payload: payload.to_vec(),
                }))
            }
            _ => {
                tracing::debug!(kind, len = record.len(), "skipping unknown kernel event");
                None
            }
        }
    }
}

impl From<&ExecEvent> for Exec {
    fn from(raw: &ExecEvent) -> Self {
        Self {
            pid: raw.pid,
            tgid: raw.tgid,
            ppid: raw.ppid,
            uid: raw.uid,
            gid: raw.gid,
            watch: raw.watch,
            ktime_ns: raw.ktime_ns,
            comm: String::from_utf8_lossy(until_nul(&raw.comm)).into_owned(),
            filename: PathBuf::from(OsString::from_vec(until_nul(&raw.filename).to_vec())),
        }
    }
}

fn until_nul(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcp_guard_common::{COMM_LEN, FILENAME_LEN};

    fn record(event: &ExecEvent) -> Vec<u8> {
        bytemuck::bytes_of(event).to_vec()
    }

    #[test]
    fn exec_record_decodes_to_strings_cut_at_nul() {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"true");
        let mut filename = [0xff; FILENAME_LEN];
        filename[..10].copy_from_slice(b"/bin/true\0");
        let raw = ExecEvent {
            kind: kind::EXEC,
            pid: 7,
            tgid: 7,
            ppid: 3,
            uid: 1000,
            gid: 100,
            watch: 1,
            _pad: 0,
            ktime_ns: 42,
            comm,
            filename,
        };
        let Some(Event::Exec(exec)) = Event::decode(&record(&raw)) else {
            panic!("not decoded");
        };
        assert_eq!(exec.comm, "true");
        assert_eq!(exec.filename, Path::new("/bin/true"));
        assert_eq!(
            (exec.pid, exec.ppid, exec.uid, exec.gid, exec.ktime_ns),
            (7, 3, 1000, 100, 42)
        );
    }

    #[test]
    fn unknown_kind_and_short_record_are_skipped() {
        assert_eq!(Event::decode(&99u32.to_ne_bytes()), None);
        assert_eq!(Event::decode(&kind::EXEC.to_ne_bytes()), None);
        assert_eq!(Event::decode(&[1, 0]), None);
    }

    /// The object this tree builds: `$MCP_GUARD_BPF_OBJECT`, else where `cargo xtask
    /// build-ebpf` puts it. Under CI a missing object is a failure, not a skip.
    fn built_object() -> Option<Vec<u8>> {
        let path = std::env::var_os(OBJECT_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../mcp-guard-ebpf/target/bpfel-unknown-none/release/mcp-guard-ebpf")
            });
        match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) if std::env::var_os("CI").is_some() => {
                panic!("no eBPF object at {}: {e}", path.display())
            }
            Err(_) => None,
        }
    }

    #[test]
    fn the_built_object_carries_this_abi() {
        let Some(bytes) = built_object() else {
            eprintln!("skipping: no eBPF object built");
            return;
        };
        assert_eq!(object_abi(&bytes), Some(ABI_VERSION));
        assert!(check_abi(Path::new("x.o"), &bytes).is_ok());
    }

    #[test]
    fn an_object_of_another_abi_or_none_is_refused() {
        use object::{Object as _, ObjectSection as _};
        // A real object with its ABI number changed in place.
        if let Some(mut bytes) = built_object() {
            let file = object::File::parse(&bytes[..]).unwrap();
            let (at, _) = file
                .section_by_name(ABI_SECTION)
                .unwrap()
                .file_range()
                .unwrap();
            let at = at as usize;
            bytes[at..at + 4].copy_from_slice(&(ABI_VERSION + 1).to_le_bytes());
            let e = check_abi(Path::new("/old/obj"), &bytes).unwrap_err();
            assert!(matches!(e, Error::Abi { found: Some(v), .. } if v == ABI_VERSION + 1));
            let shown = e.to_string();
            assert!(
                shown.contains("/old/obj") && shown.contains(&format!("ABI {}", ABI_VERSION + 1)),
                "{shown}"
            );
        }
        // Not an ELF file, and an ELF file without the section (this test binary).
        let e = check_abi(Path::new("junk"), b"\x7fELF garbage").unwrap_err();
        assert!(matches!(e, Error::Abi { found: None, .. }));
        assert!(e.to_string().contains("no ABI section"), "{e}");
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(matches!(
            check_abi(Path::new("me"), &me),
            Err(Error::Abi { found: None, .. })
        ));
    }

    #[test]
    fn object_env_is_the_only_candidate_when_set() {
        let env = Some(OsString::from("/opt/a.o"));
        let tried = candidates(env, Some(Path::new("/usr/bin/mcp-guard")));
        assert_eq!(tried, [PathBuf::from("/opt/a.o")]);
    }

    #[test]
    fn without_env_installed_path_then_exe_dir_are_candidates() {
        let tried = candidates(None, Some(Path::new("/opt/bin/mcp-guard")));
        let expected = [INSTALLED_OBJECT, "/opt/bin/mcp-guard-ebpf.o"].map(PathBuf::from);
        assert_eq!(tried, expected);
    }

    #[test]
    fn not_found_names_every_path_tried() {
        let err = Error::NotFound {
            tried: [INSTALLED_OBJECT, "/opt/x.o"].map(PathBuf::from).to_vec(),
        };
        assert_eq!(
            err.to_string(),
            "no eBPF object found (tried /usr/lib/mcp-guard/mcp-guard-ebpf.o, /opt/x.o)"
        );
    }
}

/// The fields the programs read from the `sched` tracepoints' records, found in this
/// kernel's `format` files: their offsets differ between kernels (Debian 12's 6.1 has
/// `char parent_comm[16]` where 6.18 has `__data_loc char[]`, so `child_pid` moves from 44
/// to 20). Each field is checked for the type and size the programs read.
pub mod format {
    use std::path::Path;

    use mcp_guard_common::config;

    use super::Error;

    /// What a program reads: (config index, tracepoint, field, size, `__data_loc`, required).
    const FIELDS: &[(u32, &str, &str, usize, bool, bool)] = &[
        (
            config::FORK_CHILD_PID,
            "sched_process_fork",
            "child_pid",
            4,
            false,
            true,
        ),
        (
            config::EXEC_FILENAME,
            "sched_process_exec",
            "filename",
            4,
            true,
            true,
        ),
        (
            config::EXEC_OLD_PID,
            "sched_process_exec",
            "old_pid",
            4,
            false,
            true,
        ),
        (
            config::EXIT_GROUP_DEAD,
            "sched_process_exit",
            "group_dead",
            1,
            false,
            false,
        ),
    ];

    /// One `field:` line of a format file: its declaration, offset and size.
    #[derive(Debug, PartialEq, Eq)]
    pub struct Field {
        pub decl: String,
        pub offset: usize,
        pub size: usize,
    }

    /// The fields of a format file, by name.
    pub fn parse(text: &str) -> Vec<(String, Field)> {
        let mut out = Vec::new();
        for line in text.lines() {
            let mut decl = None;
            let (mut offset, mut size) = (None, None);
            for part in line.trim().split(';') {
                let part = part.trim();
                if let Some(d) = part.strip_prefix("field:") {
                    decl = Some(d.trim().to_string());
                } else if let Some(o) = part.strip_prefix("offset:") {
                    offset = o.trim().parse().ok();
                } else if let Some(s) = part.strip_prefix("size:") {
                    size = s.trim().parse().ok();
                }
            }
            if let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) {
                // The name is the declaration's last word, without an array suffix.
                let name = decl.rsplit([' ', '*']).next().unwrap_or_default();
                let name = name.split('[').next().unwrap_or_default().to_string();
                out.push((name, Field { decl, offset, size }));
            }
        }
        out
    }

    /// The config entries for this kernel, read from tracefs at `tracefs`.
    pub fn offsets(tracefs: &Path) -> Result<Vec<(u32, u32)>, Error> {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_string();
        let read = |event: &'static str| {
            let path = tracefs.join("events/sched").join(event).join("format");
            std::fs::read_to_string(&path).map_err(|e| Error::Format {
                event,
                kernel: kernel.clone(),
                why: format!("cannot read {}: {e}", path.display()),
            })
        };
        offsets_in(&kernel, read)
    }

    /// [`offsets`] over format texts from `read`.
    pub fn offsets_in(
        kernel: &str,
        read: impl Fn(&'static str) -> Result<String, Error>,
    ) -> Result<Vec<(u32, u32)>, Error> {
        let mut out = Vec::new();
        for &(index, event, name, size, data_loc, required) in FIELDS {
            let fields = parse(&read(event)?);
            let bad = |why: String| Error::Format {
                event,
                kernel: kernel.to_string(),
                why,
            };
            let Some((_, f)) = fields.iter().find(|(n, _)| n == name) else {
                if required {
                    return Err(bad(format!("no field `{name}`")));
                }
                out.push((index, config::ABSENT));
                continue;
            };
            if f.size != size || f.decl.starts_with("__data_loc") != data_loc {
                let want = if data_loc { "a __data_loc" } else { "a plain" };
                return Err(bad(format!(
                    "field `{name}` is `{}` of {} bytes, not {want} field of {size}",
                    f.decl, f.size
                )));
            }
            // Past the common header, and within what a record can hold.
            if f.offset < 8 || f.offset > 4096 {
                return Err(bad(format!("field `{name}` at offset {}", f.offset)));
            }
            out.push((index, f.offset as u32));
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const COMMON: &str = "\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n";

        /// Debian 12's 6.1 and this machine's 6.18, as their format files say.
        fn kernel(v: &str, event: &str) -> String {
            let body = match (v, event) {
                ("6.1", "sched_process_fork") => {
                    "\tfield:char parent_comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:char child_comm[16];\toffset:28;\tsize:16;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:44;\tsize:4;\tsigned:1;\n"
                }
                ("6.1", "sched_process_exit") => {
                    "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n"
                }
                (_, "sched_process_exec") => {
                    "\tfield:__data_loc char[] filename;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:pid_t old_pid;\toffset:16;\tsize:4;\tsigned:1;\n"
                }
                ("6.18", "sched_process_fork") => {
                    "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\tfield:pid_t parent_pid;\toffset:12;\tsize:4;\tsigned:1;\n\tfield:__data_loc char[] child_comm;\toffset:16;\tsize:4;\tsigned:0;\n\tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n"
                }
                ("6.18", "sched_process_exit") => {
                    "\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;\n\tfield:pid_t pid;\toffset:24;\tsize:4;\tsigned:1;\n\tfield:int prio;\toffset:28;\tsize:4;\tsigned:1;\n\tfield:bool group_dead;\toffset:32;\tsize:1;\tsigned:0;\n"
                }
                _ => unreachable!(),
            };
            format!("name: {event}\nID: 1\nformat:\n{COMMON}{body}\nprint fmt: \"...\"\n")
        }

        #[test]
        fn kernel_releases_compare_by_major_and_minor() {
            use super::super::{MIN_KERNEL, kernel_at_least};
            for (r, ok) in [
                ("6.1.0-27-amd64", true),
                ("6.18.2", true),
                ("5.17.0", true),
                ("5.15.0-91-generic", false),
                ("4.18.0-553.el8", false),
                ("", false),
                ("x", false),
            ] {
                assert_eq!(kernel_at_least(r, MIN_KERNEL), ok, "{r}");
            }
        }

        #[test]
        fn offsets_follow_the_kernels_format_files() {
            let of = |v: &'static str| offsets_in(v, |e| Ok(kernel(v, e))).unwrap();
            assert_eq!(
                of("6.1"),
                [
                    (config::FORK_CHILD_PID, 44),
                    (config::EXEC_FILENAME, 8),
                    (config::EXEC_OLD_PID, 16),
                    (config::EXIT_GROUP_DEAD, config::ABSENT)
                ]
            );
            assert_eq!(
                of("6.18"),
                [
                    (config::FORK_CHILD_PID, 20),
                    (config::EXEC_FILENAME, 8),
                    (config::EXEC_OLD_PID, 16),
                    (config::EXIT_GROUP_DEAD, 32)
                ]
            );
        }

        #[test]
        fn a_missing_or_changed_field_is_an_error_naming_it() {
            let no_child =
                |e: &'static str| Ok(kernel("6.18", e).replace("child_pid", "child_tid"));
            let err = offsets_in("9.9", no_child).unwrap_err().to_string();
            assert!(
                err.contains("sched_process_fork")
                    && err.contains("child_pid")
                    && err.contains("9.9"),
                "{err}"
            );
            let fixed_filename = |e: &'static str| {
                Ok(kernel("6.18", e).replace(
                    "__data_loc char[] filename;\toffset:8;\tsize:4",
                    "char filename[16];\toffset:8;\tsize:16",
                ))
            };
            let err = offsets_in("9.9", fixed_filename).unwrap_err().to_string();
            assert!(
                err.contains("filename") && err.contains("__data_loc"),
                "{err}"
            );
        }

        #[test]
        fn this_kernels_files_are_read_when_tracefs_is_there() {
            let tracefs = Path::new(super::super::TRACEFS);
            if !tracefs
                .join("events/sched/sched_process_fork/format")
                .exists()
            {
                eprintln!("skipping: no tracefs at {}", tracefs.display());
                return;
            }
            let got = offsets(tracefs).unwrap();
            assert_eq!(got.len(), 4);
            assert!(got.iter().all(|&(_, o)| o != 0));
        }
    }
}
