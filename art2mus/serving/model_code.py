"""MLflow models-from-code entry point: the file MLflow logs with the model and runs to rebuild it.

MLflow executes this file on load and takes the model given to `set_model`; nothing is pickled.
The weights come from the logged packaged-model folder (see Art2MusModel.load_context).
"""

from mlflow.models import set_model

from art2mus.serving.pyfunc import Art2MusModel

set_model(Art2MusModel())  # the side effect MLflow's models-from-code contract requires
