/* The exported model the programs here are built against, by name: compile with
 * -DMODEL=name -DUPPER=NAME -include name.h (the header `nabla export` wrote). */
#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define PREDICT CAT(MODEL, _predict)
#define STEP CAT(MODEL, _step)
#define SCRATCH_SIZE CAT(MODEL, _scratch_size)
#define TOKENS_OF CAT(MODEL, _tokens)
#define INPUTS CAT(UPPER, _INPUTS)
#define INPUT_SIZES CAT(UPPER, _INPUT_SIZES)
#define OUTPUT_SIZE CAT(UPPER, _OUTPUT_SIZE)
#define OK CAT(UPPER, _OK)
