/* probe: reports, as key=value lines, what a process sees of its sandbox: ids, hostname,
 * capabilities, no_new_privs, seccomp mode, rlimits, pid, the user namespace's id maps,
 * and whether keyctl(2) (refused by containerd's default seccomp profile) is allowed.
 * Static, for any rootfs. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
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

int main(void) {
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
    printf("umask=%04o\n", umask(0));
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
    return 0;
}
