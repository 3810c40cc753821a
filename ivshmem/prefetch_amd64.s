#include "textflag.h"

// func prefetchW(p *uint32, n int)
// PREFETCHW each 64-byte line of [p, p+n): the assembler has no mnemonic
// for it (0F 0D /1).
TEXT ·prefetchW(SB), NOSPLIT, $0-16
	MOVQ p+0(FP), AX
	MOVQ n+8(FP), CX
	LEAQ (AX)(CX*1), CX
	ANDQ $~63, AX
lines:
	BYTE $0x0F; BYTE $0x0D; BYTE $0x08 // PREFETCHW (AX)
	ADDQ $64, AX
	CMPQ AX, CX
	JB lines
	RET

// func prefetchBuffers(base *byte, size uint64, hs *uint32, n int)
// PREFETCHW the first line of buffer h (at base+h*size) for each of the
// n handles at hs.
TEXT ·prefetchBuffers(SB), NOSPLIT, $0-32
	MOVQ base+0(FP), AX
	MOVQ size+8(FP), DX
	MOVQ hs+16(FP), BX
	MOVQ n+24(FP), CX
bufs:
	MOVL (BX), SI
	IMULQ DX, SI
	BYTE $0x0F; BYTE $0x0D; BYTE $0x0C; BYTE $0x30 // PREFETCHW (AX)(SI*1)
	ADDQ $4, BX
	DECQ CX
	JNZ bufs
	RET
