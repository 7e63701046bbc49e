/* exewrite PATH: tries to open PATH for writing (as the CVE-2019-5736 attack opens
 * /proc/self/exe) and reports "open-for-write=refused (errno)" or "=ALLOWED". */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    const char *p = argc > 1 ? argv[1] : "/proc/self/exe";
    int fd = open(p, O_WRONLY);
    if (fd < 0) { printf("open-for-write=refused (%s)\n", strerror(errno)); return 0; }
    printf("open-for-write=ALLOWED\n");
    close(fd);
    return 1;
}
