"""Sudoku as a task of masked diffusion (Kim et al., "Train for the Worst, Plan for the Best", ICML 2025).

    board.py     boards, the rules, the token view (digit d -> token d - 1, blank -> [MASK]), CSV I/O
    generate.py  an exact solver, random complete grids, puzzles with unique solutions, symmetries
    solve.py     solving with a model: planners, retries under symmetries, re-masking, scores
    cli.py       `ddlm sudoku solve | generate` and `ddlm eval DIR --task sudoku`
    examples/    20 example puzzles shipped as package data

Imports go one way: board <- generate <- solve <- cli; nothing here imports `ddlm.cli`.
"""
