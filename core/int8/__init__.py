"""int8: calibration maths and run, quantization, the int8 check, the external tools' formats."""
