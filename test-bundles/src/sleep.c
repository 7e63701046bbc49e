/* sleep [SECONDS]: prints "sleeping", then blocks in poll_oneoff (default 600 s). */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
int main(int argc, char **argv) {
    unsigned s = argc > 1 ? (unsigned)atoi(argv[1]) : 600;
    printf("sleeping\n");
    fflush(stdout);
    sleep(s);
    printf("woke up\n");
    return 0;
}
