from parity_tests.models import set_high_precision

set_high_precision()
