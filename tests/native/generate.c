/* generate PROMPT LENGTH: feeds the prompt's tokens (each a token index) through the exported
 * recurrent model one step at a time, then prints LENGTH tokens, each the most likely next one
 * (as `nabla generate --top-k 1` picks), as text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include "model.h"

#define STATE_SIZE CAT(UPPER, _STATE_SIZE)
#define VOCABULARY CAT(UPPER, _VOCABULARY)
#define STEP_OUTPUT_SIZE CAT(UPPER, _STEP_OUTPUT_SIZE)
#define TOKEN_COUNT CAT(UPPER, _TOKENS)
#define SEPARATOR CAT(UPPER, _TOKEN_SEPARATOR)

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s PROMPT LENGTH\n", argv[0]);
        return 2;
    }
    static float state[STATE_SIZE > 0 ? STATE_SIZE : 1], logits[STEP_OUTPUT_SIZE];
    void *scratch = malloc(SCRATCH_SIZE());
    int next = -1;
    for (const char *p = argv[1]; *p; p++) {
        /* a character-level vocabulary: the prompt's characters are tokens */
        int token = -1;
        for (int t = 0; t < TOKEN_COUNT; t++)
            if (strlen(TOKENS_OF[t]) == 1 && TOKENS_OF[t][0] == *p) token = t;
        if (token < 0) { fprintf(stderr, "'%c' is not in the vocabulary\n", *p); return 1; }
        if (STEP(token, state, logits, scratch) != OK) return 1;
    }
    for (int i = 0; i < atoi(argv[2]); i++) {
        next = 0;
        for (int t = 1; t < TOKEN_COUNT; t++)
            if (logits[t] > logits[next]) next = t;
        printf("%s%s", i ? SEPARATOR : "", TOKENS_OF[next]);
        if (STEP(next, state, logits, scratch) != OK) return 1;
    }
    printf("\n");
    return 0;
}
