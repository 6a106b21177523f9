/* mnist IMAGES LABELS OUT: classifies the MNIST test set (the uncompressed idx files) with the
 * exported model and prints its accuracy; writes every logit to OUT (raw f32). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include "model.h"

static unsigned char *slurp(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    *len = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *bytes = malloc(*len);
    if (fread(bytes, 1, *len, f) != *len) { perror(path); exit(1); }
    fclose(f);
    return bytes;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s IMAGES LABELS OUT\n", argv[0]);
        return 2;
    }
    size_t image_bytes, label_bytes;
    unsigned char *images = slurp(argv[1], &image_bytes);
    unsigned char *labels = slurp(argv[2], &label_bytes);
    size_t n = label_bytes - 8, pixels = 28 * 28;
    if (image_bytes != 16 + n * pixels) { fprintf(stderr, "images and labels disagree\n"); return 1; }
    float *x = malloc(n * pixels * sizeof(float));
    for (size_t i = 0; i < n * pixels; i++) x[i] = images[16 + i] / 255.0f;
    float *logits = malloc(n * OUTPUT_SIZE * sizeof(float));
    const float *inputs[1] = {x};
    int code = PREDICT(inputs, n, logits, NULL);
    if (code != OK) { fprintf(stderr, "predict failed: %d\n", code); return 1; }
    size_t correct = 0;
    for (size_t i = 0; i < n; i++) {
        int best = 0;
        for (int c = 1; c < OUTPUT_SIZE; c++)
            if (logits[i * OUTPUT_SIZE + c] > logits[i * OUTPUT_SIZE + best]) best = c;
        correct += best == labels[8 + i];
    }
    printf("%zu of %zu correct (%.2f%%)\n", correct, n, 100.0 * correct / n);
    FILE *o = fopen(argv[3], "wb");
    if (!o || fwrite(logits, sizeof(float), n * OUTPUT_SIZE, o) != n * OUTPUT_SIZE) { perror(argv[3]); return 1; }
    fclose(o);
    return 0;
}
