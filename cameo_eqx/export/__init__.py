"""Export to LAMMPS through chemtrain-deploy: the artifact (`chemtrain_deploy`), its protobuf codec
(`ptb`), LAMMPS files (`lammps`) and verification helpers (`verify`)."""

from .chemtrain_deploy import ExportConfig, export, export_files, export_model, make_connector_function

__all__ = ["ExportConfig", "export", "export_files", "export_model", "make_connector_function"]
