/* acell-helper: the only native code of agentcell's process-tier sandboxes.
 *
 *   acell-helper serve --sock-fd N --parent PID
 *       The node's spawner, started once per driver: the server never forks. Each request on the
 *       SOCK_SEQPACKET socket is one message of NUL-terminated strings "<id>\0<op>\0<args>..."
 *       with its file descriptors attached (SCM_RIGHTS); for "spawn" and "exec" the spawner forks
 *       a worker that does the work below, replies "S <id> <worker pid>" (or "F <id> <reason>"),
 *       and later "X <worker pid> <exit code> <signal>" when it has reaped that worker.
 *       "kill <pid> <signal>" signals a worker that has not been reaped yet. Exits at end of file.
 *
 *   spawn --cgroup-root DIR... --cgroup-dir DIR... --cgroup-set[-opt] FILE VALUE...
 *         --cgroup-procs P... --disk-bytes N --etc-skel DIR --root-mnt DIR --hostname H
 *         [--state-file F] [--bind SRC DST | --bind-ro SRC DST]...
 *                                              fds: control [, the init's end of the node's socket]
 *       Starts one sandbox: makes its cgroups and writes their limits, joins them, clones into new
 *       pid/mnt/net/ipc/uts/cgroup namespaces, builds the root filesystem, drops to the sandbox
 *       user and stays as PID 1 (reaping zombies, and forking the commands the node asks for on
 *       its socket: see "init: commands"). Once it is ready, writes
 *       "<init host pid> <init start time in ticks>" to the control fd;
 *       "conflict <dir>" if a cgroup exists, or "error <reason>". An empty --state-file (mode
 *       0600) is created for the node to fill: a new inode on a busy ext4 costs ~0.4 ms.
 *
 *   exec --pid P --cgroup-procs P... --cwd DIR [--tty 1]   fds: stdin, stdout, stderr, control,
 *                                                         command memfd, the init's pidfd
 *       Runs one command in a running sandbox (one whose init has no socket from this node: an
 *       adopted one). Writes "<host pid> <sandbox pid>\n" and later
 *       "exit <code> <signal>\n" (or "error <reason>\n") to the control fd; "error cwd <errno>"
 *       if the sandbox user cannot enter DIR (the command never ran). With --tty, stdin
 *       is a terminal (a pty slave of the sandbox's devpts, opened by the node): it becomes the
 *       command's controlling terminal.
 *
 * Built by build.py with `gcc -static -Os`; static so that the init costs a few hundred KB and
 * nothing of the host's dynamic loader runs inside a sandbox.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <net/if.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#define SANDBOX_UID 1000
#define SANDBOX_GID 1000
#define MAX_CGROUPS 16
#define MAX_BINDS 16
#define MAX_CGROUP_SETS 16
#define MAX_REQUEST (64 << 10) /* the node puts anything longer (argv, env) on a memfd */
#define MAX_REQUEST_ARGS 512
#define MAX_REQUEST_FDS 6
#define EXIT_SETUP 125     /* the helper failed before the command ran */
#define EXIT_NOTFOUND 127  /* shell convention: command or directory not found */
#define EXIT_NOEXEC 126    /* shell convention: found but not executable */
/* RLIMIT_NOFILE of every process in a sandbox, whatever the server's own (which it raises to
 * ~1M for its many connections and commands; see server/main.py). The soft limit is the classic
 * 1024 that Docker (moby#45534), containerd and systemd (>= 240) give too: select() works and a
 * program that closes every possible fd stays quick. The hard limit is lower than their 524288:
 * a program may raise its soft limit to it (Go and Java do by themselves), and 65536 is what
 * servers usually ask for, while every sandbox shares the host's fs.file-max. */
#define SANDBOX_NOFILE_SOFT 1024
#define SANDBOX_NOFILE_HARD 65536

#if defined(__x86_64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_X86_64
#elif defined(__aarch64__)
#define AUDIT_ARCH_SELF AUDIT_ARCH_AARCH64
#else
#error "acell-helper supports x86_64 and aarch64"
#endif

#define CLONE_NEW_ALL                                                                    \
    (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |       \
     CLONE_NEWPID | CLONE_NEWNET)
#ifndef CLONE_NEWTIME
#define CLONE_NEWTIME 0x00000080
#endif
#ifndef SYS_close_range
#define SYS_close_range 436 /* one number on every architecture */
#endif

/* ------------------------------------------------------------------ errors */

/* Where a fatal error goes depends on who is listening: the spawner's own stderr (/dev/null: the
 * node sees it exit), a worker's control fd, the spawn child's readiness pipe, and the exec
 * child's stderr (the user's own stream, like a shell reporting "command not found"). */
enum err_style { ERR_STDERR, ERR_READY_PIPE, ERR_CTL };
static enum err_style err_style = ERR_STDERR;
static int err_fd = 2;
static int err_code = 1;

static void write_all(int fd, const char *buf, size_t len) {
    while (len > 0) {
        ssize_t n = write(fd, buf, len);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return;
        buf += n;
        len -= (size_t)n;
    }
}

__attribute__((noreturn)) static void fail_with(const char *msg) {
    char line[600];
    int n;
    if (err_style == ERR_READY_PIPE)
        n = snprintf(line, sizeof line, "E%s", msg);
    else if (err_style == ERR_CTL)
        n = snprintf(line, sizeof line, "error %s\n", msg);
    else
        n = snprintf(line, sizeof line, "acell-helper: %s\n", msg);
    if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
    write_all(err_fd, line, (size_t)n);
    _exit(err_code);
}

__attribute__((noreturn, format(printf, 1, 2))) static void die(const char *fmt, ...) {
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fail_with(msg);
}

__attribute__((noreturn, format(printf, 1, 2))) static void die_errno(const char *fmt, ...) {
    char msg[512];
    int saved = errno;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (n >= 0 && n < (int)sizeof msg)
        snprintf(msg + n, sizeof msg - (size_t)n, ": %s", strerror(saved));
    fail_with(msg);
}

/* ------------------------------------------------------------------ small helpers */

static void write_file(const char *path, const char *text) {
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) die_errno("open %s", path);
    if (write(fd, text, strlen(text)) < 0) die_errno("write %s", path);
    close(fd);
}

/* Best effort: lowering needs CAP_SYS_RESOURCE, which some container hosts withhold. */
static int set_oom_score_adj(const char *value) {
    int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
    if (fd < 0) return 0;
    int ok = write(fd, value, strlen(value)) >= 0;
    close(fd);
    return ok;
}

static void create_file(const char *path, const char *text, mode_t mode) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0) die_errno("create %s", path);
    write_all(fd, text, strlen(text));
    close(fd);
}

static void make_dir(const char *path, mode_t mode) {
    if (mkdir(path, mode) < 0 && errno != EEXIST) die_errno("mkdir %s", path);
}

static void do_mount(const char *src, const char *dst, const char *type, unsigned long flags,
                     const char *data) {
    if (mount(src, dst, type, flags, data) < 0) die_errno("mount %s on %s", type ? type : src, dst);
}

/* The loop (kernels before 5.9) stops at 65536 even when the limit is higher (the server's is
 * ~1M): the spawner starts with only its socket (Popen closes the rest) and closes what each
 * request carried, so no fd of a helper process is numbered that high. */
static void close_range_or_loop(unsigned int lo, unsigned int hi) {
    if (lo > hi || syscall(SYS_close_range, lo, hi, 0) == 0) return;
    struct rlimit rl; /* kernels before 5.9 */
    unsigned int max = getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < 65536 ? rl.rlim_cur : 65536;
    for (unsigned int fd = lo; fd <= hi && fd < max; fd++) close((int)fd);
}

/* Not every caller marks its descriptors close-on-exec (uvloop's subprocess pipes, for one), and
 * an init holding the caller's pipe open would keep its reader waiting forever; a command must
 * not inherit the server's sockets either. Keeps 0-2 and the fds in keep (ascending, -1: none). */
static void close_other_fds(const int *keep, int nkeep) {
    unsigned int next = 3;
    for (int i = 0; i < nkeep; i++) {
        if (keep[i] < (int)next) continue;
        close_range_or_loop(next, (unsigned int)keep[i] - 1);
        next = (unsigned int)keep[i] + 1;
    }
    close_range_or_loop(next, ~0U);
}

/* Before anything of the sandbox runs: its processes never inherit the server's limit. Raising
 * the hard limit (a server whose own is below it) needs CAP_SYS_RESOURCE, which some container
 * hosts withhold: then the server's hard limit stays, and the soft one is at most it. */
static void limit_open_files(void) {
    struct rlimit rl = {SANDBOX_NOFILE_SOFT, SANDBOX_NOFILE_HARD};
    if (setrlimit(RLIMIT_NOFILE, &rl) == 0) return;
    if (getrlimit(RLIMIT_NOFILE, &rl) < 0) die_errno("getrlimit nofile");
    rl.rlim_cur = rl.rlim_max < SANDBOX_NOFILE_SOFT ? rl.rlim_max : SANDBOX_NOFILE_SOFT;
    if (rl.rlim_max > SANDBOX_NOFILE_HARD) rl.rlim_max = SANDBOX_NOFILE_HARD;
    if (setrlimit(RLIMIT_NOFILE, &rl) < 0) die_errno("setrlimit nofile");
}

/* The init holds a control fd per running command, so its own soft limit goes up to the hard one;
 * each command it forks gets the sandbox's back (command_child). */
static struct rlimit sandbox_nofile = {SANDBOX_NOFILE_SOFT, SANDBOX_NOFILE_HARD};

static void raise_own_nofile(void) {
    if (getrlimit(RLIMIT_NOFILE, &sandbox_nofile) < 0) return;
    struct rlimit own = {sandbox_nofile.rlim_max, sandbox_nofile.rlim_max};
    setrlimit(RLIMIT_NOFILE, &own);
}

/* 1 if the running kernel is at least major.minor. */
static int kernel_at_least(int major, int minor) {
    struct utsname u;
    char *end;
    if (uname(&u) < 0) return 0;
    long ma = strtol(u.release, &end, 10), mi = *end == '.' ? strtol(end + 1, NULL, 10) : 0;
    return ma > major || (ma == major && mi >= minor);
}

/* Limits the kernel checks against a count it keeps per host uid, which every sandbox shares
 * (all run as uid 1000 in the host's user namespace): one sandbox holding the whole count made
 * mq_open (queue bytes: 9 default queues) or timer_create and sigqueue (queued signals) fail in
 * every other, and the processes of all of them together count against one RLIMIT_NPROC (fork
 * and, after setresuid, execve fail past it). Unlimited here, a sandbox is bounded by its own
 * cgroups instead: processes by pids.max; message queues by its ipc namespace (256 queues of at
 * most 10 x 8 KiB); queued signals by its memory cgroup, which charges them since Linux 5.14
 * (before, the shared count stays). Best effort: raising a hard limit needs CAP_SYS_RESOURCE
 * (see limit_open_files), which some hosts withhold from root (these VMs do). */
static void unlimit_shared_counts(void) {
    static const struct rlimit unlimited = {RLIM_INFINITY, RLIM_INFINITY};
    setrlimit(RLIMIT_NPROC, &unlimited);
    setrlimit(RLIMIT_MSGQUEUE, &unlimited);
    if (kernel_at_least(5, 14)) setrlimit(RLIMIT_SIGPENDING, &unlimited);
}

/* Before anything of the sandbox runs, inherited by all of it. */
static void set_sandbox_rlimits(void) {
    limit_open_files();
    unlimit_shared_counts();
}

static void join_cgroups(const char *const *paths, int n) {
    for (int i = 0; i < n; i++) write_file(paths[i], "0"); /* "0" means the writer itself */
}

static unsigned long long parse_ull(const char *s, const char *what) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || end == s) die("bad %s: %s", what, s);
    return v;
}

/* ------------------------------------------------------------------ seccomp */

struct filter {
    struct sock_filter ins[256];
    unsigned short n;
};

static void emit(struct filter *f, unsigned short code, unsigned char jt, unsigned char jf,
                 unsigned int k) {
    if (f->n >= sizeof f->ins / sizeof f->ins[0]) die("seccomp filter too long");
    f->ins[f->n++] = (struct sock_filter)BPF_JUMP(code, k, jt, jf);
}

#define RET_ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
#define LOAD_NR BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, nr)
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
#define ARG0_LO offsetof(struct seccomp_data, args[0])
#else
#define ARG0_LO (offsetof(struct seccomp_data, args[0]) + 4)
#endif

/* Syscalls the sandbox user never needs and that widen the kernel attack surface. Most also
 * need capabilities the user lacks; refusing them here is the second fence. */
static const long denied_syscalls[] = {
#ifdef __NR_mount
    __NR_mount,
#endif
#ifdef __NR_umount2
    __NR_umount2,
#endif
#ifdef __NR_pivot_root
    __NR_pivot_root,
#endif
#ifdef __NR_move_mount
    __NR_move_mount,
#endif
#ifdef __NR_open_tree
    __NR_open_tree,
#endif
#ifdef __NR_fsopen
    __NR_fsopen,
#endif
#ifdef __NR_fsmount
    __NR_fsmount,
#endif
#ifdef __NR_fsconfig
    __NR_fsconfig,
#endif
#ifdef __NR_fspick
    __NR_fspick,
#endif
#ifdef __NR_mount_setattr
    __NR_mount_setattr,
#endif
#ifdef __NR_ptrace
    __NR_ptrace,
#endif
#ifdef __NR_process_vm_readv
    __NR_process_vm_readv,
#endif
#ifdef __NR_process_vm_writev
    __NR_process_vm_writev,
#endif
#ifdef __NR_kexec_load
    __NR_kexec_load,
#endif
#ifdef __NR_kexec_file_load
    __NR_kexec_file_load,
#endif
#ifdef __NR_bpf
    __NR_bpf,
#endif
#ifdef __NR_keyctl
    __NR_keyctl,
#endif
#ifdef __NR_add_key
    __NR_add_key,
#endif
#ifdef __NR_request_key
    __NR_request_key,
#endif
#ifdef __NR_setns
    __NR_setns,
#endif
#ifdef __NR_init_module
    __NR_init_module,
#endif
#ifdef __NR_finit_module
    __NR_finit_module,
#endif
#ifdef __NR_delete_module
    __NR_delete_module,
#endif
#ifdef __NR_reboot
    __NR_reboot,
#endif
#ifdef __NR_swapon
    __NR_swapon,
#endif
#ifdef __NR_swapoff
    __NR_swapoff,
#endif
#ifdef __NR_perf_event_open
    __NR_perf_event_open,
#endif
#ifdef __NR_settimeofday
    __NR_settimeofday,
#endif
#ifdef __NR_clock_settime
    __NR_clock_settime,
#endif
#ifdef __NR_clock_adjtime
    __NR_clock_adjtime,
#endif
#ifdef __NR_adjtimex
    __NR_adjtimex,
#endif
#ifdef __NR_acct
    __NR_acct,
#endif
#ifdef __NR_quotactl
    __NR_quotactl,
#endif
#ifdef __NR_quotactl_fd
    __NR_quotactl_fd,
#endif
#ifdef __NR_userfaultfd
    __NR_userfaultfd,
#endif
#ifdef __NR_open_by_handle_at
    __NR_open_by_handle_at,
#endif
#ifdef __NR_name_to_handle_at
    __NR_name_to_handle_at,
#endif
#ifdef __NR_syslog
    __NR_syslog,
#endif
#ifdef __NR_iopl
    __NR_iopl,
#endif
#ifdef __NR_ioperm
    __NR_ioperm,
#endif
#ifdef __NR_lookup_dcookie
    __NR_lookup_dcookie,
#endif
#ifdef __NR_vhangup
    __NR_vhangup,
#endif
#ifdef __NR_nfsservctl
    __NR_nfsservctl,
#endif
#ifdef __NR_fanotify_init
    __NR_fanotify_init, /* Docker's profile allows it only with CAP_SYS_ADMIN; unprivileged
                         * (5.13+), its groups are counted per uid: one sandbox took all 128 */
#endif
#ifdef __NR_io_uring_setup
    __NR_io_uring_setup, /* a large, often-patched surface; programs fall back to epoll */
#endif
#ifdef __NR_io_uring_enter
    __NR_io_uring_enter,
#endif
#ifdef __NR_io_uring_register
    __NR_io_uring_register,
#endif
};

/* Only the personalities a normal program asks for (queries, Linux, UNAME26, no-ASLR). */
static const unsigned int allowed_personalities[] = {0x0, 0x8, 0x20000, 0x20008, 0xffffffff};

/* Refuse `nr` when its first argument has any bit of `mask`; allow it otherwise. */
static void emit_flag_check(struct filter *f, long nr, unsigned int mask) {
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, 0, 4, (unsigned int)nr);
    emit(f, BPF_LD | BPF_W | BPF_ABS, 0, 0, ARG0_LO);
    emit(f, BPF_JMP | BPF_JSET | BPF_K, 0, 1, mask);
    emit(f, BPF_RET | BPF_K, 0, 0, RET_ERRNO(EPERM));
    emit(f, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
}

static void emit_personality_check(struct filter *f) {
    unsigned char k = sizeof allowed_personalities / sizeof allowed_personalities[0];
    emit(f, BPF_JMP | BPF_JEQ | BPF_K, 0, (unsigned char)(k + 3), __NR_personality);
    emit(f, BPF_LD | BPF_W | BPF_ABS, 0, 0, ARG0_LO);
    for (unsigned char i = 0; i < k; i++)
        emit(f, BPF_JMP | BPF_JEQ | BPF_K, (unsigned char)(k - i), 0, allowed_personalities[i]);
    emit(f, BPF_RET | BPF_K, 0, 0, RET_ERRNO(EPERM));
    emit(f, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);
}

static void load_seccomp(void) {
    static struct filter f; /* static: keeps 2 KB off the tiny init's stack */
    f.n = 0;
    emit(&f, BPF_LD | BPF_W | BPF_ABS, 0, 0, offsetof(struct seccomp_data, arch));
    emit(&f, BPF_JMP | BPF_JEQ | BPF_K, 1, 0, AUDIT_ARCH_SELF);
    emit(&f, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_KILL_PROCESS); /* i386/compat entry points */
    emit(&f, LOAD_NR);
#ifdef __x86_64__
    emit(&f, BPF_JMP | BPF_JGE | BPF_K, 0, 1, 0x40000000); /* x32 ABI: a second syscall table */
    emit(&f, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_KILL_PROCESS);
#endif
#ifdef __NR_clone3
    /* clone3 passes flags in memory that BPF cannot read: ENOSYS makes libc fall back to clone. */
    emit(&f, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, __NR_clone3);
    emit(&f, BPF_RET | BPF_K, 0, 0, RET_ERRNO(ENOSYS));
#endif
    for (size_t i = 0; i < sizeof denied_syscalls / sizeof denied_syscalls[0]; i++) {
        emit(&f, BPF_JMP | BPF_JEQ | BPF_K, 0, 1, (unsigned int)denied_syscalls[i]);
        emit(&f, BPF_RET | BPF_K, 0, 0, RET_ERRNO(EPERM));
    }
    /* The three checks below load an argument, so each ends in its own return. The low byte of
     * clone's flags is the exit signal, hence CLONE_NEWTIME (0x80) is checked on unshare only. */
    emit_flag_check(&f, __NR_clone, CLONE_NEW_ALL);
    emit_flag_check(&f, __NR_unshare, CLONE_NEW_ALL | CLONE_NEWTIME);
    emit_personality_check(&f);
    emit(&f, BPF_RET | BPF_K, 0, 0, SECCOMP_RET_ALLOW);

    struct sock_fprog prog = {.len = f.n, .filter = f.ins};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0) die_errno("no_new_privs");
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog) < 0) die_errno("seccomp");
}

/* ------------------------------------------------------------------ privileges */

/* Empty the bounding set (while still root): nothing exec'd later can regain a capability. A
 * drop replaces the process's credentials, so each one still held is dropped alone: the
 * spawner empties its set once at start (it execs nothing), and the processes it forks for
 * every command find nothing left to drop. */
static void empty_bounding_set(void) {
    int held;
    for (int cap = 0; (held = prctl(PR_CAPBSET_READ, cap, 0, 0, 0)) >= 0; cap++)
        if (held && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0) die_errno("drop capability %d", cap);
}

static void drop_privileges(void) {
    empty_bounding_set();
    if (setgroups(0, NULL) < 0) die_errno("setgroups");
    if (setresgid(SANDBOX_GID, SANDBOX_GID, SANDBOX_GID) < 0) die_errno("setresgid");
    if (setresuid(SANDBOX_UID, SANDBOX_UID, SANDBOX_UID) < 0) die_errno("setresuid");
}

static void confine(void) {
    drop_privileges();
    load_seccomp();
}

/* A reply's text: vsnprintf, cut to what fits. */
static size_t format_line(char *line, size_t size, const char *fmt, va_list ap) {
    int n = vsnprintf(line, size, fmt, ap);
    return n < 0 ? 0 : (size_t)n >= size ? size - 1 : (size_t)n;
}

/* The next message on a node's socket, with at most max_fds fds (its SCM_RIGHTS) into fds:
 * its length, 0 at end of file (the node left), -1 if recvmsg failed (EAGAIN: none is waiting).
 * A message too long, with too many fds or with fds alone has *truncated set: it is malformed. */
static ssize_t receive_request(int sock, char *buf, size_t size, int *fds, int max_fds, int *nfds,
                               int *truncated) {
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int) * MAX_REQUEST_FDS)];
    } control;
    struct iovec iov = {buf, size};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = control.space,
                         .msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)max_fds)};
    *nfds = 0;
    ssize_t n = recvmsg(sock, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
    if (n < 0) return -1;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
        if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
        int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
        for (int i = 0; i < count && *nfds < max_fds; i++)
            memcpy(&fds[(*nfds)++], CMSG_DATA(c) + i * sizeof(int), sizeof(int));
    }
    *truncated = (msg.msg_flags & (MSG_TRUNC | MSG_CTRUNC)) != 0 || (n == 0 && *nfds > 0);
    return n == 0 && *nfds > 0 ? 1 : n; /* fds alone: malformed, not the end of file */
}

/* ------------------------------------------------------------------ spawn: root filesystem */

struct bind {
    const char *src, *dst;
    int read_only;
};

struct cgroup_set {
    const char *path, *value;
    int optional; /* the file exists only with some kernel options (swap accounting) */
};

struct spawn_opts {
    const char *cgroup_roots[MAX_CGROUPS];
    int nroots;
    const char *cgroup_dirs[MAX_CGROUPS];
    int ndirs;
    struct cgroup_set sets[MAX_CGROUP_SETS];
    int nsets;
    const char *cgroups[MAX_CGROUPS];
    int ncgroups;
    struct bind binds[MAX_BINDS];
    int nbinds;
    unsigned long long disk_bytes;
    const char *etc_skel;
    const char *root_mnt;
    const char *hostname;
    const char *state_file;
};

/* Files that differ per instance go straight into the /etc upper dir (cwd is the tmpfs). */
static void write_instance_etc(const char *hostname) {
    char text[512];
    snprintf(text, sizeof text, "%s\n", hostname);
    create_file(".o/etc.u/hostname", text, 0644);
    snprintf(text, sizeof text,
             "127.0.0.1\tlocalhost\n127.0.1.1\t%s\n::1\tlocalhost ip6-localhost ip6-loopback\n",
             hostname);
    create_file(".o/etc.u/hosts", text, 0644);
}

static void mount_overlay(const char *target, const char *lower, const char *base,
                          const char *name) {
    char opts[4096 * 3];
    int n = snprintf(opts, sizeof opts, "lowerdir=%s,upperdir=%s/.o/%s.u,workdir=%s/.o/%s.w",
                     lower, base, name, base, name);
    if (n >= (int)sizeof opts) die("overlay options too long");
    do_mount("overlay", target, "overlay", MS_NOSUID | MS_NODEV, opts);
}

/* /bin, /lib... are symlinks into /usr on merged-usr hosts; a real directory is bound read-only. */
static void link_top_dirs(void) {
    static const char *const names[] = {"bin", "sbin", "lib", "lib32", "lib64", "libx32"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char host[32], inside[32], target[256];
        struct stat st;
        snprintf(host, sizeof host, "/%s", names[i]);
        snprintf(inside, sizeof inside, "r/%s", names[i]);
        ssize_t n = readlink(host, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            if (symlink(target, inside) < 0) die_errno("symlink %s", inside);
        } else if (stat(host, &st) == 0 && S_ISDIR(st.st_mode)) {
            make_dir(inside, 0755);
            do_mount(host, inside, NULL, MS_BIND | MS_REC, NULL);
            do_mount(NULL, inside, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID, NULL);
        }
    }
}

/* mkdir -p for a path relative to the cwd. */
static void make_dirs(char *path) {
    for (char *p = strchr(path + 1, '/'); p; p = strchr(p + 1, '/')) {
        *p = 0;
        make_dir(path, 0755);
        *p = '/';
    }
    make_dir(path, 0755);
}

/* Host paths the node asked for (function code...), bound non-recursively: submounts of the
 * source stay on the host. A read-only bind also gets nosuid and nodev. */
static void bind_host_paths(const struct spawn_opts *o) {
    for (int i = 0; i < o->nbinds; i++) {
        const struct bind *b = &o->binds[i];
        char inside[4200];
        struct stat st;
        if (stat(b->src, &st) < 0) die_errno("bind source %s", b->src);
        snprintf(inside, sizeof inside, "r%s", b->dst);
        if (S_ISDIR(st.st_mode)) {
            make_dirs(inside);
        } else {
            char *slash = strrchr(inside, '/');
            *slash = 0;
            make_dirs(inside);
            *slash = '/';
            create_file(inside, "", 0644);
        }
        do_mount(b->src, inside, NULL, MS_BIND, NULL);
        if (b->read_only)
            do_mount(NULL, inside, NULL, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL);
    }
}

static void build_dev(void) {
    static const char *const nodes[] = {"null", "zero", "full", "random", "urandom", "tty"};
    do_mount("tmpfs", "r/dev", "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=64k,mode=0755");
    for (size_t i = 0; i < sizeof nodes / sizeof nodes[0]; i++) {
        char host[32], inside[32];
        snprintf(host, sizeof host, "/dev/%s", nodes[i]);
        snprintf(inside, sizeof inside, "r/dev/%s", nodes[i]);
        create_file(inside, "", 0666);
        do_mount(host, inside, NULL, MS_BIND, NULL);
    }
    static const char *const links[][2] = {
        {"/proc/self/fd", "r/dev/fd"},         {"/proc/self/fd/0", "r/dev/stdin"},
        {"/proc/self/fd/1", "r/dev/stdout"},   {"/proc/self/fd/2", "r/dev/stderr"},
        {"pts/ptmx", "r/dev/ptmx"},
    };
    for (size_t i = 0; i < sizeof links / sizeof links[0]; i++)
        if (symlink(links[i][0], links[i][1]) < 0) die_errno("symlink %s", links[i][1]);
    /* Not a tmpfs of its own (that would hold up to half the host's RAM): a directory of the
     * size-limited one, so what anyone writes there counts against the instance's disk size. */
    make_dir("r/dev/shm", 01777);
    do_mount(".o/shm", "r/dev/shm", NULL, MS_BIND, NULL);
    make_dir("r/dev/pts", 0755);
    do_mount("devpts", "r/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
             "newinstance,ptmxmode=0666,mode=0620,max=64"); /* the host has kernel.pty.max for all */
}

/* Layout of the one size-limited tmpfs: .o/ holds the overlay upper and work dirs and /dev/shm
 * (reachable only through the detached old root), r/ becomes the sandbox's "/". */
static void build_root(const struct spawn_opts *o) {
    char opts[64], base[4096];
    if (strlen(o->root_mnt) >= sizeof base) die("root mount path too long");
    snprintf(base, sizeof base, "%s", o->root_mnt);
    snprintf(opts, sizeof opts, "size=%llu,mode=0755", o->disk_bytes);
    do_mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL);
    do_mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, opts);
    if (chdir(base) < 0) die_errno("chdir %s", base);
    static const char *const private_dirs[] = {".o", ".o/usr.u", ".o/usr.w", ".o/etc.u", ".o/etc.w"};
    for (size_t i = 0; i < sizeof private_dirs / sizeof private_dirs[0]; i++)
        make_dir(private_dirs[i], 0700);
    make_dir(".o/shm", 01777); /* bound on /dev/shm by build_dev */
    if (chmod(".o/usr.u", 0755) < 0 || chmod(".o/etc.u", 0755) < 0) die_errno("chmod upper");
    write_instance_etc(o->hostname);

    make_dir("r", 0755);
    do_mount("r", "r", NULL, MS_BIND, NULL); /* pivot_root needs the new root to be a mount */
    static const struct { const char *path; mode_t mode; } dirs[] = {
        {"r/usr", 0755}, {"r/etc", 0755},  {"r/home", 0755},    {"r/home/user", 0755},
        {"r/tmp", 01777}, {"r/var", 0755}, {"r/var/tmp", 01777}, {"r/run", 0755},
        {"r/proc", 0555}, {"r/dev", 0755},
    };
    for (size_t i = 0; i < sizeof dirs / sizeof dirs[0]; i++) make_dir(dirs[i].path, dirs[i].mode);
    if (chown("r/home/user", SANDBOX_UID, SANDBOX_GID) < 0) die_errno("chown home");
    if (symlink("../run", "r/var/run") < 0) die_errno("symlink var/run");

    char lower[4200];
    snprintf(lower, sizeof lower, "%s:/etc", o->etc_skel);
    bind_host_paths(o); /* first: no symlink of ours exists yet on the way to a target */
    mount_overlay("r/usr", "/usr", base, "usr");
    mount_overlay("r/etc", lower, base, "etc");
    link_top_dirs();
    do_mount("proc", "r/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL);
    build_dev();
}

/* Swap "/" for r/ and drop the host's tree: pivot_root(".", ".") stacks the old root on top of
 * the new one, and the lazy unmount takes it and every host mount under it away. */
static void enter_root(void) {
    if (chdir("r") < 0) die_errno("chdir new root");
    if (syscall(SYS_pivot_root, ".", ".") < 0) die_errno("pivot_root");
    if (umount2(".", MNT_DETACH) < 0) die_errno("detach old root");
    if (chdir("/") < 0) die_errno("chdir /");
}

static void bring_up_loopback(void) {
    struct ifreq ifr;
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) die_errno("socket");
    memset(&ifr, 0, sizeof ifr);
    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "lo");
    if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) die_errno("get lo flags");
    ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) < 0) die_errno("bring lo up");
    close(s);
}

/* ------------------------------------------------------------------ spawn: init */

/* PID 1's loop (see "init: commands" below). */
__attribute__((noreturn)) static void run_init(int sock, int sfd);

/* The spawner's command line (set by main): the host path of this binary and the server's pid. */
static char *args_area;
static size_t args_len;

/* What `ps` shows for PID 1 inside the sandbox: a plain name instead of the spawner's command
 * line, which names host paths and the server's host pid. */
static void rename_as_init(void) {
    static const char name[] = "init";
    if (args_area && args_len >= sizeof name) {
        memset(args_area, 0, args_len);
        memcpy(args_area, name, sizeof name);
    }
    prctl(PR_SET_NAME, name, 0, 0, 0);
}

__attribute__((noreturn)) static void init_child(const struct spawn_opts *o, int ready_fd, int node_sock) {
    /* Until ready, the init dies with the spawn process, so a failed start leaves nothing. */
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    err_style = ERR_READY_PIPE;
    err_fd = ready_fd;
    umask(0);
    int devnull = open("/dev/null", O_RDWR | O_CLOEXEC);
    if (devnull < 0) die_errno("open /dev/null");
    for (int fd = 0; fd < 3; fd++) dup2(devnull, fd); /* never hold the caller's pipes open */
    close(devnull);
    /* The worker's control fd goes: an init never execs, so CLOEXEC won't close it. */
    int keep[2] = {ready_fd < node_sock ? ready_fd : node_sock, ready_fd < node_sock ? node_sock : ready_fd};
    close_other_fds(node_sock < 0 ? &ready_fd : keep, node_sock < 0 ? 1 : 2);
    set_sandbox_rlimits();
    set_oom_score_adj("-1000"); /* an OOM in the sandbox should kill user code, not PID 1 */
    rename_as_init();
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigaddset(&set, SIGTERM);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) die_errno("signalfd");
    build_root(o);
    enter_root();
    if (sethostname(o->hostname, strlen(o->hostname)) < 0) die_errno("sethostname");
    bring_up_loopback();
    umask(022);
    confine();
    prctl(PR_SET_DUMPABLE, 0, 0, 0, 0); /* the user may not ptrace or read PID 1's memory */
    raise_own_nofile();
    write_all(ready_fd, "K", 1);
    close(ready_fd);
    run_init(node_sock, sfd);
}

static int under(const char *path, const char *dir) {
    size_t n = strlen(dir);
    return !strncmp(path, dir, n) && (path[n] == 0 || path[n] == '/');
}

/* A bind target is absolute, has no "." or ".." component, and lies where this helper made every
 * directory itself: not in the overlays (/usr, /etc hold host symlinks, which would resolve on
 * the host before pivot_root), /proc or /dev. */
static int is_safe_target(const char *dst) {
    static const char *const reserved[] = {"/usr", "/etc", "/proc", "/dev", "/bin", "/sbin", "/lib",
                                           "/lib32", "/lib64", "/libx32"};
    if (dst[0] != '/' || strlen(dst) > 4000 || !strcmp(dst, "/")) return 0;
    for (size_t i = 0; i < sizeof reserved / sizeof reserved[0]; i++)
        if (under(dst, reserved[i])) return 0;
    for (const char *p = dst; p; p = strchr(p + 1, '/')) {
        if (!strncmp(p, "/./", 3) || !strcmp(p, "/.") || !strncmp(p, "/../", 4) || !strcmp(p, "/..") ||
            !strncmp(p, "//", 2) || !strcmp(p, "/"))
            return 0;
    }
    return 1;
}

static void parse_bind(struct spawn_opts *o, const char *src, const char *dst, int read_only) {
    if (o->nbinds >= MAX_BINDS) die("too many binds");
    if (src[0] != '/') die("bind source must be absolute: %s", src);
    if (!is_safe_target(dst)) die("bad bind target: %s", dst);
    o->binds[o->nbinds++] = (struct bind){src, dst, read_only};
}

static void add_path(const char **list, int *n, const char *path, const char *option) {
    if (*n >= MAX_CGROUPS) die("too many %s", option);
    list[(*n)++] = path;
}

static void parse_cgroup_set(struct spawn_opts *o, const char *path, const char *value, int optional) {
    if (o->nsets >= MAX_CGROUP_SETS) die("too many --cgroup-set");
    o->sets[o->nsets++] = (struct cgroup_set){path, value, optional};
}

static void parse_spawn(int argc, char **argv, struct spawn_opts *o) {
    memset(o, 0, sizeof *o);
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) die("option %s needs a value", a);
        const char *v = argv[++i];
        int pair = !strcmp(a, "--bind") || !strcmp(a, "--bind-ro") || !strncmp(a, "--cgroup-set", 12);
        if (pair && i + 1 >= argc) die("option %s needs two values", a);
        if (!strcmp(a, "--bind") || !strcmp(a, "--bind-ro")) {
            parse_bind(o, v, argv[++i], !strcmp(a, "--bind-ro"));
        } else if (!strcmp(a, "--cgroup-set") || !strcmp(a, "--cgroup-set-opt")) {
            parse_cgroup_set(o, v, argv[++i], !strcmp(a, "--cgroup-set-opt"));
        } else if (!strcmp(a, "--cgroup-root")) {
            add_path(o->cgroup_roots, &o->nroots, v, a);
        } else if (!strcmp(a, "--cgroup-dir")) {
            add_path(o->cgroup_dirs, &o->ndirs, v, a);
        } else if (!strcmp(a, "--cgroup-procs")) {
            add_path(o->cgroups, &o->ncgroups, v, a);
        } else if (!strcmp(a, "--disk-bytes")) {
            o->disk_bytes = parse_ull(v, "--disk-bytes");
        } else if (!strcmp(a, "--etc-skel")) {
            o->etc_skel = v;
        } else if (!strcmp(a, "--root-mnt")) {
            o->root_mnt = v;
        } else if (!strcmp(a, "--hostname")) {
            o->hostname = v;
        } else if (!strcmp(a, "--state-file")) {
            o->state_file = v;
        } else {
            die("unknown option %s", a);
        }
    }
    if (!o->disk_bytes || !o->etc_skel || !o->root_mnt || !o->hostname)
        die("spawn needs --disk-bytes, --etc-skel, --root-mnt and --hostname");
    if (strpbrk(o->etc_skel, ",:\\")) die("--etc-skel may not contain , : or \\");
    if (strpbrk(o->root_mnt, ",:\\")) die("--root-mnt may not contain , : or \\");
    if (strlen(o->hostname) > 64) die("--hostname is longer than 64 bytes");
}

__attribute__((noreturn)) static void report_conflict(const char *dir) {
    char line[600];
    int n = snprintf(line, sizeof line, "conflict %s\n", dir);
    write_all(err_fd, line, n < (int)sizeof line ? (size_t)n : sizeof line - 1);
    _exit(err_code);
}

/* The instance's cgroups, made here rather than by the node: cgroup creation is the slowest file
 * work of a start, and here it runs beside the node's event loop. A directory that exists already
 * is another start of the same id: the ones made here are removed again and the node is told. */
static void create_cgroups(const struct spawn_opts *o) {
    for (int i = 0; i < o->nroots; i++) make_dir(o->cgroup_roots[i], 0755);
    for (int i = 0; i < o->ndirs; i++) {
        if (mkdir(o->cgroup_dirs[i], 0755) == 0) continue;
        int saved = errno;
        for (int j = i - 1; j >= 0; j--) rmdir(o->cgroup_dirs[j]);
        errno = saved;
        if (saved == EEXIST) report_conflict(o->cgroup_dirs[i]);
        die_errno("mkdir %s", o->cgroup_dirs[i]);
    }
    for (int i = 0; i < o->nsets; i++) {
        const struct cgroup_set *c = &o->sets[i];
        int fd = open(c->path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 && c->optional && errno == ENOENT) continue;
        if (fd < 0) die_errno("open %s", c->path);
        if (write(fd, c->value, strlen(c->value)) < 0) die_errno("write %s", c->path);
        close(fd);
    }
}

/* The init's identity for the node's records, read here so that the node reads no /proc.
 * 0 on success; -1 with errno set. */
static int report_init(int ctl_fd, pid_t pid) {
    char path[64], stat_text[1024], line[96];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return -1;
    ssize_t n = read(fd, stat_text, sizeof stat_text - 1);
    close(fd);
    if (n <= 0) return -1;
    stat_text[n] = 0;
    char *field = strrchr(stat_text, ')'); /* the command name may hold spaces and parentheses */
    for (int i = 0; field && i < 20; i++) field = strchr(field + 1, ' '); /* to field 22 */
    if (!field) return errno = EINVAL, -1;
    int len = snprintf(line, sizeof line, "%d %llu\n", pid, strtoull(field + 1, NULL, 10));
    write_all(ctl_fd, line, (size_t)len);
    return 0;
}

static void create_state_file(const char *path) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) die_errno("create %s", path);
    close(fd);
}

/* node_sock: the init's end of the node's command socket, or -1 (commands then go through exec
 * workers only). */
static int run_spawn(int argc, char **argv, int ctl_fd, int node_sock) {
    struct spawn_opts o;
    int pipefd[2];
    err_fd = ctl_fd;
    int keep[2] = {ctl_fd < node_sock ? ctl_fd : node_sock, ctl_fd < node_sock ? node_sock : ctl_fd};
    close_other_fds(node_sock < 0 ? &ctl_fd : keep, node_sock < 0 ? 1 : 2);
    parse_spawn(argc, argv, &o);
    create_cgroups(&o);
    join_cgroups(o.cgroups, o.ncgroups);
    if (o.state_file) create_state_file(o.state_file);
    if (pipe2(pipefd, O_CLOEXEC) < 0) die_errno("pipe");
    long flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWIPC | CLONE_NEWUTS |
                 CLONE_NEWCGROUP | SIGCHLD;
    pid_t pid = (pid_t)syscall(SYS_clone, flags, 0, 0, 0, 0); /* fork-like: no new stack */
    if (pid < 0) die_errno("clone");
    if (pid == 0) {
        close(pipefd[0]);
        init_child(&o, pipefd[1], node_sock);
    }
    close(pipefd[1]);
    if (node_sock >= 0) close(node_sock); /* the init's alone: its end of file means the node left */
    char buf[600];
    ssize_t n;
    do n = read(pipefd[0], buf, sizeof buf - 1);
    while (n < 0 && errno == EINTR);
    if (n > 0 && buf[0] == 'K' && report_init(ctl_fd, pid) == 0) return 0;
    int saved = errno;
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    errno = saved;
    if (n > 0 && buf[0] == 'K') die_errno("cannot read the init's /proc entry");
    buf[n > 0 ? n : 0] = 0;
    die("sandbox init failed: %s", n > 1 ? buf + 1 : "it exited during setup");
}

/* ------------------------------------------------------------------ exec */

struct exec_opts {
    const char *cgroups[MAX_CGROUPS];
    int ncgroups;
    pid_t init_pid;
    int init_pidfd;
    const char *cwd;
    int ctl_fd;
    int cmd_fd;
    int oom_protected; /* this helper lowered its OOM score: the command must not inherit it */
    int tty;           /* stdin is a terminal to make the command's controlling one */
    char **argv;
    char **env;
};

static void parse_exec(int argc, char **argv, struct exec_opts *o) {
    for (int i = 0; i < argc; i++) {
        const char *a = argv[i];
        if (i + 1 >= argc) die("option %s needs a value", a);
        const char *v = argv[++i];
        if (!strcmp(a, "--cgroup-procs")) {
            add_path(o->cgroups, &o->ncgroups, v, a);
        } else if (!strcmp(a, "--pid")) {
            o->init_pid = (pid_t)parse_ull(v, "--pid");
        } else if (!strcmp(a, "--cwd")) {
            o->cwd = v;
        } else if (!strcmp(a, "--tty")) {
            o->tty = (int)parse_ull(v, "--tty");
        } else {
            die("unknown option %s", a);
        }
    }
    if (o->init_pid <= 0 || !o->cwd) die("exec needs --pid and --cwd");
}

/* The command line and environment arrive on a memfd: "<argc>\0", the arguments, then the
 * environment, each NUL-terminated. Not in our own environ: this process runs as host root, so
 * user-chosen variables (GLIBC_TUNABLES...) never reach its libc; and not in the request, so a
 * command line of any length fits. */
static void read_command(struct exec_opts *o) {
    struct stat st;
    if (fstat(o->cmd_fd, &st) < 0) die_errno("command fd");
    size_t size = (size_t)st.st_size;
    char *buf = malloc(size + 1);
    size_t got = 0;
    if (!buf) die("out of memory");
    while (got < size) {
        ssize_t n = pread(o->cmd_fd, buf + got, size - got, (off_t)got);
        if (n <= 0) die_errno("read command");
        got += (size_t)n;
    }
    buf[size] = 0;
    size_t count = 0;
    for (size_t i = 0; i < size; i++) count += buf[i] == 0;
    char **strs = calloc(count + 2, sizeof *strs); /* argv and env, each NULL-terminated */
    if (!strs) die("out of memory");
    size_t k = 0;
    for (size_t i = 0; i < size; i += strlen(buf + i) + 1) strs[k++] = buf + i;
    if (k == 0 || size == 0 || buf[size - 1] != 0) die("malformed command");
    unsigned long long argc = parse_ull(strs[0], "argument count");
    if (argc == 0 || argc > k - 1) die("malformed command");
    memmove(strs, strs + 1, argc * sizeof *strs); /* argv moves down over the count */
    o->argv = strs;
    o->argv[argc] = NULL;
    o->env = strs + argc + 1; /* where the environment already is */
    o->env[k - 1 - argc] = NULL;
    close(o->cmd_fd);
}

/* One atomic setns through a pidfd (Linux 5.8+). The caller's own pidfd of the init is best: it
 * cannot name another process even if the init died and its pid was reused. Kernels before 5.8
 * go through /proc/<pid>/ns. */
static void enter_namespaces(pid_t pid, int given_pidfd) {
    int flags = CLONE_NEWIPC | CLONE_NEWUTS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWCGROUP |
                CLONE_NEWNS;
    int pidfd = given_pidfd >= 0 ? given_pidfd : (int)syscall(SYS_pidfd_open, pid, 0);
    if (pidfd < 0 && errno == ESRCH) die("sandbox init %d is gone", pid);
    if (pidfd >= 0) {
        int rc = setns(pidfd, flags), saved = errno;
        close(pidfd);
        if (rc == 0) return;
        if (saved == ESRCH) die("sandbox init %d is gone", pid);
        if (given_pidfd >= 0 && saved != EINVAL) {
            errno = saved;
            die_errno("setns into sandbox init %d", pid);
        }
    }
    static const char *const names[] = {"ipc", "uts", "net", "pid", "cgroup", "mnt"};
    int fds[6];
    for (int i = 0; i < 6; i++) {
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/ns/%s", pid, names[i]);
        fds[i] = open(path, O_RDONLY | O_CLOEXEC);
        if (fds[i] < 0) die_errno("open %s", path);
    }
    for (int i = 0; i < 6; i++) {
        if (setns(fds[i], 0) < 0) die_errno("setns %s", names[i]);
        close(fds[i]);
    }
}

/* The child reports on a pipe, one int at a time: its pid as the sandbox sees it (which only the
 * child knows: getpid() there), at once; then, confined, the errno of its chdir into the working
 * directory (0: it is in it, and execs next). 0 if the child died first (the pid: -1). */
static int read_report(int fd, int *value) {
    ssize_t n;
    do n = read(fd, value, sizeof *value);
    while (n < 0 && errno == EINTR);
    return n == sizeof *value;
}

/* The file execvp would have run for `name`: `name` itself if it has a slash, else the first
 * PATH entry holding it (an empty entry is the working directory). 0 if there is none. */
static int find_program(const char *name, char *out, size_t size) {
    if (strchr(name, '/')) return snprintf(out, size, "%s", name) < (int)size && access(out, F_OK) == 0;
    const char *path = getenv("PATH");
    for (const char *p = path ? path : "/bin:/usr/bin";; p++) {
        const char *end = strchrnul(p, ':');
        int dir_len = end > p ? (int)(end - p) : 1;
        int n = snprintf(out, size, "%.*s/%s", dir_len, end > p ? p : ".", name);
        if (n < (int)size && access(out, F_OK) == 0) return 1;
        if (!*end) return 0;
        p = end;
    }
}

/* As a shell says it, on the command's stderr: "name: command not found" (127) when no such
 * program exists, "path: bad interpreter..." (126) when it exists but its #! interpreter or its
 * loader does not (execve's ENOENT for both), else "name: <why>" (126). */
__attribute__((noreturn)) static void exec_failed(const char *name) {
    int saved = errno, found = 0;
    char line[600], program[4200];
    if (saved == ENOENT) found = find_program(name, program, sizeof program);
    int n;
    if (saved == ENOENT && !found && !strchr(name, '/'))
        n = snprintf(line, sizeof line, "%s: command not found\n", name);
    else if (saved == ENOENT && found)
        n = snprintf(line, sizeof line, "%s: bad interpreter (its #! line) or loader: %s\n", program,
                     strerror(saved));
    else
        n = snprintf(line, sizeof line, "%s: %s\n", name, strerror(saved));
    if (n > (int)sizeof line - 1) n = (int)sizeof line - 1;
    if (n > 0) write_all(2, line, (size_t)n);
    _exit(saved == ENOENT && !found ? EXIT_NOTFOUND : EXIT_NOEXEC);
}

__attribute__((noreturn)) static void exec_child(const struct exec_opts *o, const sigset_t *oldmask,
                                                 int report_fd) {
    err_style = ERR_STDERR;
    err_fd = 2;
    err_code = EXIT_SETUP;
    close(o->ctl_fd); /* the command must never see the control pipe */
    if (o->oom_protected) set_oom_score_adj("0");
    if (setsid() < 0) die_errno("setsid");
    if (o->tty && ioctl(0, TIOCSCTTY, 0) < 0) die_errno("controlling terminal");
    confine();
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); /* after setresuid, which clears it */
    /* As the sandbox user: a directory it may not enter is as bad as one that does not exist. The
     * worker turns a failure into an error the node answers the start request with (400). */
    int cwd_errno = chdir(o->cwd) < 0 ? errno : 0;
    write_all(report_fd, (const char *)&cwd_errno, sizeof cwd_errno);
    close(report_fd);
    if (cwd_errno) _exit(EXIT_NOTFOUND);
    sigprocmask(SIG_SETMASK, oldmask, NULL);
    environ = o->env; /* execvp looks the program up on the command's PATH, as its shell would */
    execvp(o->argv[0], o->argv);
    exec_failed(o->argv[0]);
}

/* The exit line is written before the child is reaped: until then its pid cannot be reused, so a
 * pidfd the node opens while no exit line is there names the command (see process.py). */
static int forward_until_exit(pid_t child, const sigset_t *set, int ctl_fd) {
    for (;;) {
        siginfo_t si;
        int sig = sigwaitinfo(set, &si);
        if (sig < 0) continue;
        if (sig != SIGCHLD) {
            kill(child, sig);
            continue;
        }
        memset(&si, 0, sizeof si);
        if (waitid(P_PID, (id_t)child, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid != child)
            continue;
        int signo = si.si_code == CLD_EXITED ? 0 : si.si_status;
        int code = signo ? 128 + signo : si.si_status;
        char line[64];
        int n = snprintf(line, sizeof line, "exit %d %d\n", code, signo);
        write_all(ctl_fd, line, (size_t)n);
        waitpid(child, NULL, 0);
        return code;
    }
}

static void sort3(int *v) {
    for (int i = 0; i < 2; i++)
        for (int j = 0; j < 2 - i; j++)
            if (v[j] > v[j + 1]) {
                int t = v[j];
                v[j] = v[j + 1];
                v[j + 1] = t;
            }
}

/* fds: control, command memfd, the init's pidfd (stdin, stdout and stderr are 0-2 already). */
static int run_exec(int argc, char **argv, const int *fds) {
    struct exec_opts o;
    memset(&o, 0, sizeof o);
    o.ctl_fd = err_fd = fds[0];
    o.cmd_fd = fds[1];
    o.init_pidfd = fds[2];
    err_code = EXIT_SETUP;
    int keep[3] = {o.ctl_fd, o.cmd_fd, o.init_pidfd};
    sort3(keep);
    close_other_fds(keep, 3);
    set_sandbox_rlimits(); /* inherited by the command */
    parse_exec(argc, argv, &o);
    read_command(&o);
    o.oom_protected = set_oom_score_adj("-1000");
    join_cgroups(o.cgroups, o.ncgroups);
    int pid_pipe[2];
    if (pipe2(pid_pipe, O_CLOEXEC) < 0) die_errno("pipe");
    enter_namespaces(o.init_pid, o.init_pidfd);
    if (chdir("/") < 0) die_errno("chdir /");

    sigset_t set, oldmask;
    static const int forwarded[] = {SIGCHLD, SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof forwarded / sizeof forwarded[0]; i++) sigaddset(&set, forwarded[i]);
    sigprocmask(SIG_BLOCK, &set, &oldmask);
    pid_t child = fork();
    if (child < 0) die_errno("fork");
    if (child == 0) {
        pid_t self = getpid();
        close(pid_pipe[0]);
        write_all(pid_pipe[1], (const char *)&self, sizeof self);
        exec_child(&o, &oldmask, pid_pipe[1]);
    }
    close(pid_pipe[1]);
    int pid = -1, cwd_errno = 0;
    if (!read_report(pid_pipe[0], &pid)) pid = -1;
    else if (!read_report(pid_pipe[0], &cwd_errno)) cwd_errno = 0; /* its exit status tells why */
    close(pid_pipe[0]);
    if (cwd_errno) {
        waitpid(child, NULL, 0);
        die("cwd %d", cwd_errno); /* the node knows the path, and words the error */
    }
    char line[64];
    int n = snprintf(line, sizeof line, "%d %d\n", child, pid);
    write_all(o.ctl_fd, line, (size_t)n);
    return forward_until_exit(child, &set, o.ctl_fd);
}

/* ------------------------------------------------------------------ init: commands
 *
 * PID 1 reaps whatever is orphaned to it. A SIGTERM from outside the sandbox (pid 0 as the sandbox
 * sees it) is passed on to every process; the same signal from inside is ignored, so the user
 * cannot stop the instance by accident. The node ends the instance by SIGKILLing this process.
 *
 * It also starts the node's commands, when the node gave it a socket at spawn (SOCK_SEQPACKET):
 * it is already in the sandbox's namespaces and cgroups, unprivileged and under seccomp, so a fork
 * of it needs none of an exec worker's joins, setns, privilege drop and filter load (docs/design.md
 * has what that saves). A request is "<id>\0exec\0<cwd>\0<tty 0|1>\0" with stdin, stdout,
 * stderr and the command memfd attached. The answer is "S <id> <pid>" with a pidfd of the command
 * attached (the node reads its host pid there), or "F <id> <reason>" ("cwd <errno>" if the sandbox
 * user cannot enter cwd: the command never ran). Once the command has exited the init sends
 * "X <id> <code> <signal>", before it reaps it (as an exec worker writes its exit line): while no
 * X has come, a pidfd the node opens from the pid names the command. A command holds no fd of the
 * node's but its stdio. At the socket's end of file (the node is gone, or released the instance)
 * the init stops taking requests; its commands run on, as a worker's do when its node dies (a
 * function instance's server keeps its memory for the next server, which adopts the instance and
 * runs its commands through workers). */

/* The NUL-terminated strings of a request, at most max of them; -1 if malformed. */
static int split_request(char *buf, size_t len, char **args, int max) {
    if (len == 0 || buf[len - 1] != 0) return -1;
    int n = 0;
    for (size_t i = 0; i < len; i += strlen(buf + i) + 1) {
        if (n >= max) return -1;
        args[n++] = buf + i;
    }
    args[n] = NULL;
    return n;
}

static int is_request_id(const char *s) {
    size_t n = strlen(s);
    return n > 0 && n < 20 && strspn(s, "0123456789") == n;
}

struct command {
    pid_t pid;
    char id[20];
};
static struct command *commands;
static size_t ncommands, commands_cap;
static int command_sock = -1; /* the init's end of the node's socket; -1 once the node left */

static void reply_node(int fd, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reply_node(int fd, const char *fmt, ...) {
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    size_t n = format_line(line, sizeof line, fmt, ap);
    va_end(ap);
    union {
        struct cmsghdr align;
        char space[CMSG_SPACE(sizeof(int))];
    } control;
    struct iovec iov = {line, n};
    struct msghdr msg = {.msg_iov = &iov, .msg_iovlen = 1};
    if (fd >= 0) {
        msg.msg_control = control.space;
        msg.msg_controllen = sizeof control.space;
        struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
        c->cmsg_level = SOL_SOCKET;
        c->cmsg_type = SCM_RIGHTS;
        c->cmsg_len = CMSG_LEN(sizeof(int));
        memcpy(CMSG_DATA(c), &fd, sizeof fd);
    }
    while (sendmsg(command_sock, &msg, MSG_NOSIGNAL) < 0 && errno == EINTR) {
    }
}

static int track_command(pid_t pid, const char *id) {
    if (ncommands == commands_cap) {
        size_t cap = commands_cap ? commands_cap * 2 : 16;
        struct command *grown = realloc(commands, cap * sizeof *grown);
        if (!grown) return -1;
        commands = grown;
        commands_cap = cap;
    }
    commands[ncommands].pid = pid;
    snprintf(commands[ncommands++].id, sizeof commands->id, "%s", id);
    return 0;
}

/* The exit report of a tracked command; then it is forgotten. */
static void command_exited(pid_t pid, const siginfo_t *si) {
    for (size_t i = 0; i < ncommands; i++) {
        if (commands[i].pid != pid) continue;
        int signo = si->si_code == CLD_EXITED ? 0 : si->si_status;
        reply_node(-1, "X %s %d %d", commands[i].id, signo ? 128 + signo : si->si_status, signo);
        commands[i] = commands[--ncommands];
        return;
    }
}

static void reap_children(void) {
    for (;;) {
        siginfo_t si;
        memset(&si, 0, sizeof si);
        if (waitid(P_ALL, 0, &si, WEXITED | WNOHANG | WNOWAIT) < 0 || si.si_pid == 0) return;
        command_exited(si.si_pid, &si); /* its line first: until reaped, its pid is its own */
        waitid(P_PID, (id_t)si.si_pid, &si, WEXITED);
    }
}

__attribute__((noreturn)) static void command_child(const char *cwd, int tty, const int *fds, int report_fd) {
    err_style = ERR_STDERR;
    err_fd = 2;
    err_code = EXIT_SETUP;
    for (int fd = 0; fd < 3; fd++)
        if (dup2(fds[fd], fd) < 0) _exit(EXIT_SETUP);
    struct exec_opts o;
    memset(&o, 0, sizeof o);
    o.cmd_fd = fds[3];
    int keep[2] = {report_fd < o.cmd_fd ? report_fd : o.cmd_fd, report_fd < o.cmd_fd ? o.cmd_fd : report_fd};
    close_other_fds(keep, 2); /* the node's socket, the signalfd */
    read_command(&o);
    setrlimit(RLIMIT_NOFILE, &sandbox_nofile);
    set_oom_score_adj("0"); /* the init's -1000 is for the init only */
    if (setsid() < 0) die_errno("setsid");
    if (tty && ioctl(0, TIOCSCTTY, 0) < 0) die_errno("controlling terminal");
    int cwd_errno = chdir(cwd) < 0 ? errno : 0;
    write_all(report_fd, (const char *)&cwd_errno, sizeof cwd_errno);
    close(report_fd);
    if (cwd_errno) _exit(EXIT_NOTFOUND);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    environ = o.env;
    execvp(o.argv[0], o.argv);
    exec_failed(o.argv[0]);
}

/* fds: stdin, stdout, stderr, command memfd (the caller closes them). */
static void start_command(const char *id, const char *cwd, int tty, const int *fds) {
    int report[2];
    if (pipe2(report, O_CLOEXEC) < 0) {
        reply_node(-1, "F %s pipe: %s", id, strerror(errno));
        return;
    }
    pid_t pid = fork();
    if (pid == 0) command_child(cwd, tty, fds, report[1]);
    int fork_errno = errno;
    close(report[1]);
    int cwd_errno = 0;
    ssize_t n = -1;
    if (pid > 0) {
        do n = read(report[0], &cwd_errno, sizeof cwd_errno);
        while (n < 0 && errno == EINTR);
    }
    close(report[0]);
    if (n != sizeof cwd_errno) cwd_errno = 0; /* it died first: its exit status tells why */
    int pidfd = pid > 0 && !cwd_errno ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
    if (pid < 0)
        reply_node(-1, "F %s fork: %s", id, strerror(fork_errno));
    else if (cwd_errno)
        reply_node(-1, "F %s cwd %d", id, cwd_errno); /* it exits; reaped as an orphan */
    else if (pidfd < 0 || track_command(pid, id) < 0) {
        kill(pid, SIGKILL);
        reply_node(-1, "F %s %s", id, pidfd < 0 ? "pidfd_open failed" : "out of memory");
    } else {
        reply_node(pidfd, "S %s %d", id, pid);
    }
    if (pidfd >= 0) close(pidfd);
}

/* One request; 0 once the node is gone. */
static int serve_node(void) {
    static char buf[8192];
    int fds[4], nfds, truncated;
    ssize_t n = receive_request(command_sock, buf, sizeof buf, fds, 4, &nfds, &truncated);
    if (n == 0) return 0;
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    char *args[5] = {0};
    int nargs = truncated ? -1 : split_request(buf, (size_t)n, args, 4);
    const char *id = nargs >= 1 && is_request_id(args[0]) ? args[0] : "0";
    if (nargs == 4 && !strcmp(args[1], "exec") && nfds == 4 && strcmp(id, "0"))
        start_command(id, args[2], !strcmp(args[3], "1"), fds);
    else
        reply_node(-1, "F %s malformed request", id);
    for (int i = 0; i < nfds; i++) close(fds[i]);
    return 1;
}

__attribute__((noreturn)) static void run_init(int sock, int sfd) {
    command_sock = sock;
    struct pollfd p[2] = {{.fd = sfd, .events = POLLIN}, {.fd = command_sock, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) continue;
        if (p[0].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) == sizeof si)
                if (si.ssi_signo == SIGTERM && si.ssi_pid == 0) kill(-1, SIGTERM);
            reap_children();
        }
        if (p[1].revents && !serve_node()) {
            close(command_sock);
            command_sock = p[1].fd = -1;
            ncommands = 0; /* nobody to report to */
        }
    }
}

/* ------------------------------------------------------------------ serve: the node's spawner */

static int server_sock = -1;

static void reply(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void reply(const char *fmt, ...) {
    char line[600];
    va_list ap;
    va_start(ap, fmt);
    size_t n = format_line(line, sizeof line, fmt, ap);
    va_end(ap);
    while (send(server_sock, line, n, MSG_NOSIGNAL) < 0) {
        if (errno == EINTR) continue;
        _exit(errno == EPIPE || errno == ECONNRESET ? 0 : 1); /* the node is gone */
    }
}

/* A worker: a fork of this small process, so starting one costs no exec. It begins with the
 * spawner's blocked SIGCHLD, which nothing it runs may inherit. */
__attribute__((noreturn)) static void run_worker(const char *op, int argc, char **argv, int *fds, int nfds) {
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sched_param normal = {.sched_priority = 0};
    sched_setscheduler(0, SCHED_OTHER, &normal);
    err_style = ERR_CTL;
    if (!strcmp(op, "spawn") && (nfds == 1 || nfds == 2)) _exit(run_spawn(argc, argv, fds[0], nfds == 2 ? fds[1] : -1));
    if (!strcmp(op, "exec") && nfds == 6) {
        for (int fd = 0; fd < 3; fd++)
            if (dup2(fds[fd], fd) < 0) _exit(EXIT_SETUP);
        _exit(run_exec(argc, argv, fds + 3));
    }
    _exit(EXIT_SETUP);
}

/* Only a child not reaped yet: its pid cannot have been handed to another process. */
static void kill_worker(int argc, char **argv) {
    siginfo_t si;
    if (argc != 2) return;
    pid_t pid = (pid_t)strtol(argv[0], NULL, 10);
    int sig = (int)strtol(argv[1], NULL, 10);
    if (pid > 0 && waitid(P_PID, (id_t)pid, &si, WEXITED | WNOHANG | WNOWAIT) == 0) kill(pid, sig);
}

static void handle_request(char *buf, size_t len, int *fds, int nfds) {
    static char *args[MAX_REQUEST_ARGS + 1];
    int n = split_request(buf, len, args, MAX_REQUEST_ARGS);
    const char *id = n >= 1 && is_request_id(args[0]) ? args[0] : "0";
    if (n >= 2 && !strcmp(args[1], "kill")) {
        kill_worker(n - 2, args + 2);
    } else if (n >= 2 && strcmp(id, "0")) {
        pid_t pid = fork();
        if (pid == 0) run_worker(args[1], n - 2, args + 2, fds, nfds);
        if (pid < 0)
            reply("F %s fork: %s", id, strerror(errno));
        else
            reply("S %s %d", id, pid);
    } else {
        reply("F %s malformed request", id);
    }
    for (int i = 0; i < nfds; i++) close(fds[i]);
}

static void reap_workers(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        int code = WIFEXITED(status) ? WEXITSTATUS(status) : 0;
        reply("X %d %d %d", pid, code, WIFSIGNALED(status) ? WTERMSIG(status) : 0);
    }
}

/* One request; 0 at end of file (the node closed its end). */
static int serve_one(void) {
    static char buf[MAX_REQUEST];
    int fds[MAX_REQUEST_FDS], nfds, truncated;
    ssize_t n = receive_request(server_sock, buf, sizeof buf, fds, MAX_REQUEST_FDS, &nfds, &truncated);
    if (n == 0) return 0;
    if (n < 0) return errno == EINTR || errno == EAGAIN;
    handle_request(buf, truncated ? 0 : (size_t)n, fds, nfds); /* (length 0: malformed) */
    return 1;
}

/* Signals the server was started with ignored (a background job's SIGINT and SIGQUIT, nohup's
 * SIGHUP, whatever a supervisor left) would stay ignored in every process of every sandbox, since
 * exec keeps an ignored disposition: a terminal's ^C, a code run's interrupt, a user's `kill -INT`
 * would do nothing there. So the spawner sets each ignored signal back to its default, for itself
 * and all it forks. By system call: libc's sigaction refuses the real-time signals it keeps for
 * itself, which a parent may have ignored as well. */
struct kernel_sigaction {
    void (*handler)(int);
    unsigned long flags;
    void (*restorer)(void);
    unsigned long mask;
};

static void reset_ignored_signals(void) {
    for (int sig = 1; sig <= 64; sig++) {
        struct kernel_sigaction now, dfl;
        memset(&now, 0, sizeof now);
        memset(&dfl, 0, sizeof dfl); /* SIG_DFL, no flags, nothing blocked */
        if (syscall(SYS_rt_sigaction, sig, NULL, &now, sizeof now.mask) == 0 && now.handler == SIG_IGN)
            syscall(SYS_rt_sigaction, sig, &dfl, NULL, sizeof dfl.mask);
    }
}

static int cmd_serve(int argc, char **argv) {
    if (argc != 4 || strcmp(argv[0], "--sock-fd") || strcmp(argv[2], "--parent"))
        die("usage: acell-helper serve --sock-fd N --parent PID");
    server_sock = (int)parse_ull(argv[1], "--sock-fd");
    close_other_fds(&server_sock, 1);
    if (fcntl(server_sock, F_SETFD, FD_CLOEXEC) < 0) die_errno("socket fd");
    prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0); /* the spawner never outlives its node */
    if (getppid() != (pid_t)parse_ull(argv[3], "--parent")) return 0;
    set_oom_score_adj("-1000");
    empty_bounding_set();
    reset_ignored_signals();
    struct sched_param batch = {.sched_priority = 0};
    sched_setscheduler(0, SCHED_BATCH, &batch);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGCHLD);
    sigprocmask(SIG_BLOCK, &set, NULL);
    int sfd = signalfd(-1, &set, SFD_CLOEXEC | SFD_NONBLOCK);
    if (sfd < 0) die_errno("signalfd");
    struct pollfd p[2] = {{.fd = server_sock, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    for (;;) {
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR) continue;
            die_errno("poll");
        }
        if (p[1].revents) {
            struct signalfd_siginfo si;
            while (read(sfd, &si, sizeof si) > 0) {
            }
            reap_workers();
        }
        if (p[0].revents && !serve_one()) return 0;
    }
}

int main(int argc, char **argv) {
    args_area = argv[0];
    args_len = (size_t)(argv[argc - 1] + strlen(argv[argc - 1]) - argv[0]);
    if (argc >= 2 && !strcmp(argv[1], "serve")) return cmd_serve(argc - 2, argv + 2);
    die("usage: acell-helper serve --sock-fd N --parent PID");
}
