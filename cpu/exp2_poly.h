/* Coefficients of the polynomial the vector kernels use for 2^f on
 * |f| <= 1/2: the Taylor series of e^(f ln 2) to degree 6, c_k = ln(2)^k / k!
 * (relative error < 2e-7, below f32's half ulp at 6e-8 times a few; the
 * attention tests' tolerance accounts for it). */
#ifndef TD_CPU_EXP2_POLY_H
#define TD_CPU_EXP2_POLY_H

#define TD_EXP2_C1 6.9314718055994531e-1f
#define TD_EXP2_C2 2.4022650695910071e-1f
#define TD_EXP2_C3 5.5504108664821580e-2f
#define TD_EXP2_C4 9.6181291076284772e-3f
#define TD_EXP2_C5 1.3333558146428443e-3f
#define TD_EXP2_C6 1.5403530393381606e-4f

#endif /* TD_CPU_EXP2_POLY_H */
