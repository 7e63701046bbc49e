/* The native counterpart of hello.wat, for comparisons with runc and crun. */
#include <unistd.h>
int main(void) {
    static const char msg[] = "Hello from a native program!\n";
    return write(1, msg, sizeof msg - 1) == sizeof msg - 1 ? 0 : 1;
}
