/* cat [FILE...]: copies each file, or stdin when none is given, to stdout; exits 1 naming
   the file it cannot open. */
#include <stdio.h>
static void copy(FILE *f) {
    char buf[4096];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) {
        fwrite(buf, 1, n, stdout);
        fflush(stdout);
    }
}
int main(int argc, char **argv) {
    if (argc < 2) {
        copy(stdin);
        return 0;
    }
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        if (!f) { perror(argv[i]); return 1; }
        copy(f);
        fclose(f);
    }
    return 0;
}
