"""Small molecules as SMILES strings: the MOSES data (`data`), a SMILES tokenizer (`tokenizer`) and
the RDKit metrics of generated molecules (`metrics`).

RDKit is an optional extra (`pip install 'ddlm[molecules]'`) and the data come from the PyPI wheel
`molsets` (`pip install --no-deps molsets==0.3.1`); both are imported only when used, so importing this
package never fails.
"""
