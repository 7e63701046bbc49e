/* probe: reports, as key=value lines, what a process sees of its sandbox. Static, for any
 * rootfs.
 *
 * Without arguments: ids, hostname, capabilities, no_new_privs, seccomp mode, the nofile
 * rlimit, whether keyctl(2) (refused by containerd's default seccomp profile) is allowed,
 * the umask, the user namespace's id maps, the open descriptors and the terminal.
 *
 * With arguments, only the sections named, in order, so that reports stay diffable:
 *   basic            the report above
 *   ids              uid, gid, supplementary groups
 *   host             hostname and domainname
 *   caps             the capability sets, NoNewPrivs, Seccomp
 *   rlimits          every rlimit, soft/hard
 *   umask            the umask
 *   oom              /proc/self/oom_score_adj
 *   pidns            own pid and how many processes /proc shows
 *   mounts           /proc/self/mountinfo: mount point, fstype, mount options, and the
 *                    superblock options of tmpfs/proc/mqueue/devpts mounts
 *   devices          the nodes and links directly in /dev (type major:minor mode uid:gid)
 *   cgroup           the limits readable in /sys/fs/cgroup (v1 and v2 file names)
 *   mount:PATH       the mountinfo line of PATH only (or "none")
 *   masked:PATH      what PATH looks like (a masked file is /dev/null, a masked dir an
 *                    empty read-only tmpfs)
 *   ro:PATH          whether PATH's mount is read-only and what a write gives
 *   write:PATH       whether a file can be created in directory PATH
 *   sysctl:NAME      the value of /proc/sys/NAME (dots for slashes)
 *   stat:PATH        type, mode, owner of PATH
 *   winsize          the terminal's size, waiting up to 3 s for a non-zero one
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/utsname.h>
#include <termios.h>
#include <unistd.h>

static void status_line(const char *key) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[512];
    if (!f) { printf("%s=unreadable\n", key); return; }
    while (fgets(line, sizeof line, f)) {
        size_t n = strlen(key);
        if (strncmp(line, key, n) == 0 && line[n] == ':') {
            char *v = line + n + 1;
            while (*v == ' ' || *v == '\t') v++;
            printf("%s=%s", key, v);
        }
    }
    fclose(f);
}

static const char *errname(int e) {
    switch (e) {
    case 0: return "ok";
    case EROFS: return "EROFS";
    case EACCES: return "EACCES";
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EEXIST: return "EEXIST";
    case EINVAL: return "EINVAL";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EIO: return "EIO";
    case ENXIO: return "ENXIO";
    case ENOSPC: return "ENOSPC";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "errno%d", e);
        return buf;
    }
    }
}

/* Reads a small file into buf (trailing newlines dropped); returns 0 or an errno. */
static int read_small(const char *path, char *buf, size_t size) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return errno;
    ssize_t n = read(fd, buf, size - 1);
    int e = n < 0 ? errno : 0;
    close(fd);
    if (n < 0) n = 0;
    buf[n] = 0;
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' ')) buf[--n] = 0;
    for (char *c = buf; *c; c++)
        if (*c == '\n') *c = ' ';
    return e;
}

/* A /proc file on one line: lines joined with ';', runs of blanks squeezed to one. */
static void file_line(const char *key, const char *path) {
    FILE *f = fopen(path, "r");
    int c, blank = 1, lines = 0;
    printf("%s=", key);
    if (!f) { printf("unreadable\n"); return; }
    while ((c = fgetc(f)) != EOF) {
        if (c == '\n') { blank = 1; lines++; continue; }
        if (c == ' ' || c == '\t') { blank = blank ? blank : 2; continue; }
        if (blank == 2) putchar(' ');
        else if (blank == 1 && lines) putchar(';');
        blank = 0;
        putchar(c);
    }
    printf("\n");
    fclose(f);
}

static void basic(void) {
    char host[256] = "";
    gethostname(host, sizeof host);
    printf("pid=%d\nuid=%d\ngid=%d\nhostname=%s\n", getpid(), getuid(), getgid(), host);
    gid_t groups[64];
    int n = getgroups(64, groups);
    printf("groups=");
    for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", groups[i]);
    printf("\n");
    const char *keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"};
    for (unsigned i = 0; i < sizeof keys / sizeof *keys; i++) status_line(keys[i]);
    struct rlimit r;
    getrlimit(RLIMIT_NOFILE, &r);
    printf("nofile=%llu/%llu\n", (unsigned long long)r.rlim_cur, (unsigned long long)r.rlim_max);
    long k = syscall(SYS_keyctl, 0 /* KEYCTL_GET_KEYRING_ID */, -3 /* session */, 0);
    printf("keyctl=%s\n", k >= 0 ? "allowed" : (errno == EPERM ? "EPERM" : "allowed-but-failed"));
    mode_t m = umask(0);
    umask(m);
    printf("umask=%04o\n", m);
    file_line("uid_map", "/proc/self/uid_map");
    file_line("gid_map", "/proc/self/gid_map");
    file_line("setgroups", "/proc/self/setgroups");
    /* Open descriptors, without the one that lists them. */
    DIR *d = opendir("/proc/self/fd");
    int own = d ? dirfd(d) : -1, first = 1;
    struct dirent *e;
    printf("fds=");
    while (d && (e = readdir(d))) {
        if (e->d_name[0] == '.' || atoi(e->d_name) == own) continue;
        printf("%s%s", first ? "" : ",", e->d_name);
        first = 0;
    }
    printf("\n");
    if (d) closedir(d);
    /* stdin as a terminal: its size, and whether it is the controlling terminal. */
    struct winsize ws;
    if (ioctl(0, TIOCGWINSZ, &ws) == 0)
        printf("tty=%ux%u ctty=%s\n", ws.ws_col, ws.ws_row, tcgetsid(0) == getsid(0) ? "yes" : "no");
    else
        printf("tty=none\n");
}

static void ids(void) {
    printf("uid=%d\ngid=%d\n", getuid(), getgid());
    gid_t groups[64];
    int n = getgroups(64, groups);
    printf("groups=");
    for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", groups[i]);
    printf("\n");
}

static void host(void) {
    struct utsname u;
    uname(&u);
    printf("hostname=%s\ndomainname=%s\n", u.nodename, u.domainname);
}

static void caps(void) {
    const char *keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs", "Seccomp"};
    for (unsigned i = 0; i < sizeof keys / sizeof *keys; i++) status_line(keys[i]);
}

static void rlimits(void) {
    static const struct { int res; const char *name; } all[] = {
        {RLIMIT_AS, "as"}, {RLIMIT_CORE, "core"}, {RLIMIT_CPU, "cpu"}, {RLIMIT_DATA, "data"},
        {RLIMIT_FSIZE, "fsize"}, {RLIMIT_LOCKS, "locks"}, {RLIMIT_MEMLOCK, "memlock"},
        {RLIMIT_MSGQUEUE, "msgqueue"}, {RLIMIT_NICE, "nice"}, {RLIMIT_NOFILE, "nofile"},
        {RLIMIT_NPROC, "nproc"}, {RLIMIT_RSS, "rss"}, {RLIMIT_RTPRIO, "rtprio"},
        {RLIMIT_RTTIME, "rttime"}, {RLIMIT_SIGPENDING, "sigpending"}, {RLIMIT_STACK, "stack"},
    };
    for (unsigned i = 0; i < sizeof all / sizeof *all; i++) {
        struct rlimit r;
        getrlimit(all[i].res, &r);
        printf("rlimit.%s=", all[i].name);
        if (r.rlim_cur == RLIM_INFINITY) printf("unlimited"); else printf("%llu", (unsigned long long)r.rlim_cur);
        printf("/");
        if (r.rlim_max == RLIM_INFINITY) printf("unlimited"); else printf("%llu", (unsigned long long)r.rlim_max);
        printf("\n");
    }
}

static void file_value(const char *key, const char *path) {
    char buf[4096];
    int e = read_small(path, buf, sizeof buf);
    printf("%s=%s\n", key, e ? errname(e) : buf);
}

static void pidns(void) {
    printf("pid=%d\n", getpid());
    DIR *d = opendir("/proc");
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        if (e->d_name[0] >= '1' && e->d_name[0] <= '9') n++;
    if (d) closedir(d);
    printf("visible_pids=%d\n", n);
}

/* Keeps only the superblock options that describe what the spec asked for. */
static void filter_super(const char *fstype, char *super, char *out, size_t size) {
    out[0] = 0;
    if (strcmp(fstype, "tmpfs") && strcmp(fstype, "proc") && strcmp(fstype, "mqueue") && strcmp(fstype, "devpts")) return;
    char *save, *o;
    for (o = strtok_r(super, ",", &save); o; o = strtok_r(NULL, ",", &save)) {
        if (!strcmp(o, "rw") || !strcmp(o, "ro") || !strncmp(o, "inode64", 7)) continue;
        if (out[0]) strncat(out, ",", size - strlen(out) - 1);
        strncat(out, o, size - strlen(out) - 1);
    }
}

/* Calls fn(mountpoint, fstype, mount options, filtered super options) per mountinfo line. */
static void each_mount(void (*fn)(const char *, const char *, const char *, const char *, void *), void *arg) {
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[4096];
    if (!f) { printf("mountinfo=unreadable\n"); return; }
    while (fgets(line, sizeof line, f)) {
        char *fields[16];
        int n = 0;
        char *save, *t;
        for (t = strtok_r(line, " \n", &save); t && n < 16; t = strtok_r(NULL, " \n", &save)) fields[n++] = t;
        int dash = -1;
        for (int i = 6; i < n; i++)
            if (!strcmp(fields[i], "-")) { dash = i; break; }
        if (dash < 0 || dash + 3 >= n) continue;
        char super[1024];
        filter_super(fields[dash + 1], fields[dash + 3], super, sizeof super);
        fn(fields[4], fields[dash + 1], fields[5], super, arg);
    }
    fclose(f);
}

static void print_mount(const char *mp, const char *fstype, const char *opts, const char *super, void *arg) {
    const char *want = arg;
    if (want && strcmp(want, mp)) return;
    printf("mount %s %s %s%s%s\n", mp, fstype, opts, super[0] ? " " : "", super);
}

static void one_mount(const char *path) {
    char want[1024];
    snprintf(want, sizeof want, "%s", path);
    /* The last matching line is the one on top; print every match, in order. */
    int found = 0;
    FILE *f = fopen("/proc/self/mountinfo", "r");
    char line[4096];
    while (f && fgets(line, sizeof line, f)) {
        char copy[4096];
        strcpy(copy, line);
        char *save, *t, *fields[16];
        int n = 0;
        for (t = strtok_r(copy, " \n", &save); t && n < 16; t = strtok_r(NULL, " \n", &save)) fields[n++] = t;
        if (n > 4 && !strcmp(fields[4], want)) found = 1;
    }
    if (f) fclose(f);
    if (!found) { printf("mount %s none\n", path); return; }
    each_mount(print_mount, want);
}

static void masked(const char *path) {
    struct stat st;
    printf("masked:%s=", path);
    if (stat(path, &st) != 0) { printf("%s\n", errname(errno)); return; }
    if (S_ISDIR(st.st_mode)) {
        struct statfs fs;
        struct statvfs vfs;
        statfs(path, &fs);
        statvfs(path, &vfs);
        int entries = 0;
        DIR *d = opendir(path);
        struct dirent *e;
        while (d && (e = readdir(d)))
            if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) entries++;
        if (d) closedir(d);
        printf("dir %s %s entries=%d\n", fs.f_type == 0x01021994 ? "tmpfs" : "not-tmpfs", (vfs.f_flag & ST_RDONLY) ? "ro" : "rw", entries);
        return;
    }
    char buf[64];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { printf("%s open=%s\n", S_ISCHR(st.st_mode) ? "chr" : "file", errname(errno)); return; }
    ssize_t n = read(fd, buf, sizeof buf);
    int e = n < 0 ? errno : 0;
    close(fd);
    if (S_ISCHR(st.st_mode))
        printf("chr %u:%u read=%s\n", major(st.st_rdev), minor(st.st_rdev), n < 0 ? errname(e) : (n == 0 ? "empty" : "data"));
    else
        printf("file read=%s\n", n < 0 ? errname(e) : (n == 0 ? "empty" : "data"));
}

static void readonly(const char *path) {
    struct statvfs vfs;
    struct stat st;
    printf("ro:%s=", path);
    if (stat(path, &st) != 0 || statvfs(path, &vfs) != 0) { printf("%s\n", errname(errno)); return; }
    printf("mount-%s write=", (vfs.f_flag & ST_RDONLY) ? "ro" : "rw");
    if (S_ISDIR(st.st_mode)) {
        char p[1024];
        snprintf(p, sizeof p, "%s/.probe-write", path);
        if (mkdir(p, 0700) == 0) { rmdir(p); printf("ok\n"); } else printf("%s\n", errname(errno));
    } else {
        int fd = open(path, O_WRONLY | O_CLOEXEC);
        if (fd < 0) printf("%s\n", errname(errno)); else { close(fd); printf("ok\n"); }
    }
}

static void writable(const char *path) {
    char p[1024];
    snprintf(p, sizeof p, "%s/.probe-write", path);
    int fd = open(p, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    printf("write:%s=", path);
    if (fd < 0) { printf("%s\n", errname(errno)); return; }
    close(fd);
    unlink(p);
    printf("ok\n");
}

static void sysctl(const char *name) {
    char path[512], key[512];
    snprintf(path, sizeof path, "/proc/sys/%s", name);
    for (char *c = path + 10; *c; c++)
        if (*c == '.') *c = '/';
    snprintf(key, sizeof key, "sysctl:%s", name);
    file_value(key, path);
}

static void describe(const char *label, const char *path) {
    struct stat st;
    printf("%s=", label);
    if (lstat(path, &st) != 0) { printf("%s\n", errname(errno)); return; }
    if (S_ISLNK(st.st_mode)) {
        char t[512];
        ssize_t n = readlink(path, t, sizeof t - 1);
        t[n < 0 ? 0 : n] = 0;
        printf("link %s\n", t);
        return;
    }
    char kind = S_ISCHR(st.st_mode) ? 'c' : S_ISBLK(st.st_mode) ? 'b' : S_ISFIFO(st.st_mode) ? 'p' : S_ISDIR(st.st_mode) ? 'd' : S_ISSOCK(st.st_mode) ? 's' : 'f';
    if (kind == 'c' || kind == 'b') {
        /* Whether the device cgroup lets it be opened (O_NONBLOCK: a tty must not block). */
        int fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
        int e = fd < 0 ? errno : 0;
        if (fd >= 0) close(fd);
        printf("%c %u:%u %04o %d:%d open=%s\n", kind, major(st.st_rdev), minor(st.st_rdev), st.st_mode & 07777, st.st_uid, st.st_gid, errname(e));
    }
    else
        printf("%c %04o %d:%d\n", kind, st.st_mode & 07777, st.st_uid, st.st_gid);
}

static int cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static void devices(void) {
    DIR *d = opendir("/dev");
    struct dirent *e;
    char *names[256];
    int n = 0;
    while (d && (e = readdir(d)) && n < 256)
        if (e->d_name[0] != '.') names[n++] = strdup(e->d_name);
    if (d) closedir(d);
    qsort(names, n, sizeof *names, cmp);
    for (int i = 0; i < n; i++) {
        char p[512], label[512];
        snprintf(p, sizeof p, "/dev/%s", names[i]);
        snprintf(label, sizeof label, "dev:%s", p);
        describe(label, p);
    }
}

/* A file of lines (devices.list), sorted and joined by commas: the kernel keeps rules in
 * the order they were written, which differs between runtimes for the same set. */
static void sorted_lines(const char *key, const char *path) {
    char buf[4096], *lines[128];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) { printf("%s=%s\n", key, errname(errno)); return; }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n < 0 ? 0 : n] = 0;
    int count = 0;
    char *save, *t;
    for (t = strtok_r(buf, "\n", &save); t && count < 128; t = strtok_r(NULL, "\n", &save)) lines[count++] = t;
    qsort(lines, count, sizeof *lines, cmp);
    printf("%s=", key);
    for (int i = 0; i < count; i++) printf("%s%s", i ? "," : "", lines[i]);
    printf("\n");
}

static void cgroup(void) {
    static const char *files[] = {
        "memory/memory.limit_in_bytes", "memory/memory.memsw.limit_in_bytes", "memory/memory.soft_limit_in_bytes",
        "memory/memory.swappiness", "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us", "cpu/cpu.shares",
        "cpuset/cpuset.cpus", "cpuset/cpuset.mems", "pids/pids.max",
        /* v2 names, at the top of a cgroup2 mount */
        "memory.max", "memory.low", "cpu.max", "cpu.weight", "pids.max",
    };
    for (unsigned i = 0; i < sizeof files / sizeof *files; i++) {
        char p[512], key[512];
        snprintf(p, sizeof p, "/sys/fs/cgroup/%s", files[i]);
        snprintf(key, sizeof key, "cgroup:%s", files[i]);
        file_value(key, p);
    }
    sorted_lines("cgroup:devices/devices.list", "/sys/fs/cgroup/devices/devices.list");
}

int main(int argc, char **argv) {
    if (argc < 2) { basic(); return 0; }
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *colon = strchr(a, ':');
        const char *param = colon ? colon + 1 : "";
        size_t len = colon ? (size_t)(colon - a) : strlen(a);
#define IS(s) (len == strlen(s) && !strncmp(a, s, len))
        if (IS("basic")) basic();
        else if (IS("ids")) ids();
        else if (IS("host")) host();
        else if (IS("caps")) caps();
        else if (IS("rlimits")) rlimits();
        else if (IS("umask")) { mode_t m = umask(0); umask(m); printf("umask=%04o\n", m); }
        else if (IS("oom")) file_value("oom_score_adj", "/proc/self/oom_score_adj");
        else if (IS("pidns")) pidns();
        else if (IS("mounts")) each_mount(print_mount, NULL);
        else if (IS("devices")) devices();
        else if (IS("cgroup")) cgroup();
        else if (IS("mount")) one_mount(param);
        else if (IS("masked")) masked(param);
        else if (IS("ro")) readonly(param);
        else if (IS("write")) writable(param);
        else if (IS("sysctl")) sysctl(param);
        else if (IS("winsize")) {
            /* The terminal's size once it has one: ResizePty may come just after start. */
            struct winsize ws = {0};
            for (int i = 0; i < 300 && ioctl(0, TIOCGWINSZ, &ws) == 0 && ws.ws_col == 0; i++) usleep(10000);
            printf("winsize=%ux%u\n", ws.ws_col, ws.ws_row);
        }
        else if (IS("stat")) { char label[512]; snprintf(label, sizeof label, "stat:%s", param); describe(label, param); }
        else { printf("unknown-section=%s\n", a); return 2; }
        fflush(stdout);
    }
    return 0;
}
