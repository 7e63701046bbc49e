/* A pause container in the manner of Kubernetes': sleeps until SIGINT or SIGTERM, reaps
 * orphans (it is pid 1 of the pod's pid namespace). Built static by the project. */
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
static void stop(int sig) { _exit(0); }
static void reap(int sig) { while (waitpid(-1, NULL, WNOHANG) > 0) {} }
int main(void) {
    struct sigaction a = {0};
    a.sa_handler = stop;
    sigaction(SIGINT, &a, NULL);
    sigaction(SIGTERM, &a, NULL);
    a.sa_handler = reap;
    a.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &a, NULL);
    for (;;) pause();
}
