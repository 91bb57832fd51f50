from twisted.application.service import ServiceMaker

faasgate = ServiceMaker("faastwist gate", "faastwist.tap", "FaaS gateway and controller for Knative", "faasgate")
