/* predict IN N OUT [REPEAT]: the exported model's prediction for the N examples in IN (each
 * input's N rows of floats, one input after another, as raw little-endian f32) into OUT (N
 * rows of the prediction). The scratch starts as NaN garbage, so that a kernel reading what it
 * did not write shows. With REPEAT, also times REPEAT calls and prints the median call in
 * microseconds. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include "model.h"

static int compare(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s IN N OUT [REPEAT]\n", argv[0]);
        return 2;
    }
    size_t n = strtoul(argv[2], NULL, 10);
    size_t sizes[INPUTS] = INPUT_SIZES;
    const float *inputs[INPUTS];
    FILE *in = fopen(argv[1], "rb");
    if (!in) { perror(argv[1]); return 1; }
    for (int i = 0; i < INPUTS; i++) {
        float *values = malloc(n * sizes[i] * sizeof(float) + 1);
        if (fread(values, sizeof(float), n * sizes[i], in) != n * sizes[i]) {
            fprintf(stderr, "%s: too short\n", argv[1]);
            return 1;
        }
        inputs[i] = values;
    }
    fclose(in);
    float *out = malloc(n * OUTPUT_SIZE * sizeof(float) + 1);
    size_t bytes = SCRATCH_SIZE();
    unsigned char *scratch = malloc(bytes);
    memset(scratch, 0xff, bytes);
    int code = PREDICT(inputs, n, out, scratch);
    if (code != OK) {
        fprintf(stderr, "predict failed: %d\n", code);
        return 1;
    }
    FILE *o = fopen(argv[3], "wb");
    if (!o || fwrite(out, sizeof(float), n * OUTPUT_SIZE, o) != n * OUTPUT_SIZE) {
        perror(argv[3]);
        return 1;
    }
    fclose(o);
    if (argc > 4) {
        int repeat = atoi(argv[4]);
        double *us = malloc(sizeof(double) * (repeat > 0 ? repeat : 1));
        for (int r = 0; r < repeat; r++) {
            struct timespec a, b;
            clock_gettime(CLOCK_MONOTONIC, &a);
            PREDICT(inputs, n, out, scratch);
            clock_gettime(CLOCK_MONOTONIC, &b);
            us[r] = (b.tv_sec - a.tv_sec) * 1e6 + (b.tv_nsec - a.tv_nsec) / 1e3;
        }
        qsort(us, repeat, sizeof(double), compare);
        printf("median %.2f us per call of %zu examples (%d calls)\n", us[repeat / 2], n, repeat);
    }
    return 0;
}
